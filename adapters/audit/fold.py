"""Read models folded from envelopes with the projections' own pure apply functions: the
same code the Kafka-fed projectors run, so a fold of the history is what they must hold."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec

from adapters.projector.runner import ProjectionSpec
from adapters.relay.envelope import Envelope


def fold(
    spec: ProjectionSpec[Any],
    envelopes: Iterable[Envelope],
    rows: dict[UUID, Any] | None = None,
    limits: Mapping[UUID, int] | None = None,
) -> dict[UUID, Any]:
    """Apply each envelope of the spec's aggregate type to its row (one per aggregate);
    an aggregate listed in `limits` stops at that version."""
    rows = {} if rows is None else rows
    for envelope in envelopes:
        if envelope.aggregatetype != spec.aggregate_type:
            continue
        key = UUID(envelope.subject)
        if limits is not None and key in limits and envelope.aggregateversion > limits[key]:
            continue
        new = spec.apply(rows.get(key), envelope)
        if new is not None:
            rows[key] = new
    return rows


def fold_all(
    specs: Mapping[str, ProjectionSpec[Any]], envelopes: Iterable[Envelope]
) -> dict[str, dict[UUID, Any]]:
    """Every projection's rows, in one pass over the envelopes."""
    by_type: dict[str, list[tuple[str, ProjectionSpec[Any]]]] = {}
    for name, spec in specs.items():
        by_type.setdefault(spec.aggregate_type, []).append((name, spec))
    rows: dict[str, dict[UUID, Any]] = {name: {} for name in specs}
    for envelope in envelopes:
        for name, spec in by_type.get(envelope.aggregatetype, ()):
            fold(spec, (envelope,), rows[name])
    return rows


def normal(value: Any) -> Any:
    """`value` with every datetime in UTC, so equal instants encode identically."""
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    if isinstance(value, msgspec.Struct):
        return msgspec.structs.replace(
            value, **{f: normal(getattr(value, f)) for f in value.__struct_fields__}
        )
    if isinstance(value, tuple | list):
        return type(value)(normal(v) for v in value)
    if isinstance(value, dict):
        return {k: normal(v) for k, v in value.items()}
    return value


def row_json(key: UUID, row: Any) -> dict[str, Any]:
    """A row as plain JSON, keyed by its aggregate id."""
    data: dict[str, Any] = msgspec.to_builtins(normal(row))
    return {"id": str(key), **data}
