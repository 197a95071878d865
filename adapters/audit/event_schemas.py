"""JSON Schemas of every event type on the stream, generated from the domain's own event
classes: each event's fields (minus what the envelope carries and what never leaves the
database) become a msgspec Struct, and msgspec writes its schema. The envelope around it is
the relay's own `Envelope` Struct, with `type` fixed to the event's type.

Each schema carries its event class's `class_version` as `x-class-version`: a change to an
event's shape must come with a version bump (and an `upcast_vN_vN+1` for the stored rows).

`xentree-live audit schemas --write docs/events` keeps docs/events/ in step with the code;
unit tests fail when they drift apart, and when a schema changes without a version bump
(which `--write` refuses too, so regenerating is no way round the bump)."""

from __future__ import annotations

import importlib
import pkgutil
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
from eventsourcing.domain import Aggregate, CanInitAggregate

import domain
from adapters.relay.envelope import _NOT_DATA, _SECRETS, TYPE_PREFIX, Envelope

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def aggregates() -> Iterator[type[Aggregate]]:
    for info in sorted(pkgutil.iter_modules(domain.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"domain.{info.name}")
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, Aggregate)
                and value.__module__ == module.__name__
            ):
                yield value


def event_classes(aggregate: type[Aggregate]) -> dict[str, type[Any]]:
    """The aggregate's own event classes by name (the generic `Created` only when the
    aggregate names no created event of its own)."""
    found = {
        name: cls
        for name in dir(aggregate)
        if isinstance(cls := getattr(aggregate, name), type)
        and issubclass(cls, aggregate.Event)
        and cls.__qualname__ == f"{aggregate.__qualname__}.{name}"
        and name != "Event"
    }
    creators = [n for n, c in found.items() if issubclass(c, CanInitAggregate)]
    if len(creators) > 1:
        found.pop("Created", None)
    return dict(sorted(found.items()))


def data_struct(aggregate: type[Aggregate], name: str, cls: type[Any]) -> type[msgspec.Struct]:
    hints = typing.get_type_hints(cls)
    fields = [
        (field, hint)
        for field, hint in hints.items()
        if field not in _NOT_DATA
        and field not in _SECRETS
        and field != "originator_id_type"
        and typing.get_origin(hint) is not typing.ClassVar
    ]
    return msgspec.defstruct(f"{aggregate.__name__}{name}", fields, kw_only=True)


def class_version(cls: type[Any]) -> int:
    """The version eventsourcing stores with (and upcasts to) the event's state."""
    version: int = getattr(cls, "class_version", 1)
    return version


def event_types() -> dict[str, type[msgspec.Struct]]:
    """`xentree.live.<Aggregate>.<Event>` -> the Struct of its `data`."""
    return {
        f"{TYPE_PREFIX}{aggregate.__name__}.{name}": data_struct(aggregate, name, cls)
        for aggregate in aggregates()
        for name, cls in event_classes(aggregate).items()
    }


def event_versions() -> dict[str, int]:
    """`xentree.live.<Aggregate>.<Event>` -> its event class's `class_version`."""
    return {
        f"{TYPE_PREFIX}{aggregate.__name__}.{name}": class_version(cls)
        for aggregate in aggregates()
        for name, cls in event_classes(aggregate).items()
    }


def schema_of(
    event_type: str, data: type[msgspec.Struct], version: int = 1
) -> dict[str, Any]:
    _, components = msgspec.json.schema_components([Envelope, data])
    defs = {k: v for k, v in components.items() if k != "Envelope"}
    body: dict[str, Any] = dict(components["Envelope"])
    properties = dict(body["properties"])
    properties["type"] = {"const": event_type}
    properties["data"] = {"$ref": f"#/$defs/{data.__name__}"}
    body["properties"] = properties
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": f"https://xentree.live/schemas/events/{event_type}.json",
        **body,
        "title": event_type,
        "description": f"{event_type}: a CloudEvents 1.0 envelope on the live-events topic.",
        "x-class-version": version,
        "$defs": defs,
    }


def schemas() -> dict[str, dict[str, Any]]:
    versions = event_versions()
    return {
        event_type: schema_of(event_type, data, versions[event_type])
        for event_type, data in event_types().items()
    }


def render(schema: dict[str, Any]) -> bytes:
    return msgspec.json.format(msgspec.json.encode(schema), indent=2) + b"\n"


class UnversionedChange(ValueError):
    """Regenerating would publish a changed shape under a version already published."""


def published(directory: Path) -> dict[str, dict[str, Any]]:
    """The schemas written to `directory` before, by event type."""
    found = {}
    for path in sorted(directory.glob(f"{TYPE_PREFIX}*.json")):
        try:
            found[path.name.removesuffix(".json")] = msgspec.json.decode(path.read_bytes())
        except msgspec.DecodeError as exc:
            raise ValueError(f"{path} is not a JSON Schema: {exc}") from None
    return found


def write(directory: Path) -> list[Path]:
    """Write one <type>.json per event type (and remove schemas of types that are gone).

    Refuses, writing nothing, when a type's shape changed without a `class_version` bump:
    regenerating must not be the way round the version check."""
    directory.mkdir(parents=True, exist_ok=True)
    generated = schemas()
    problems = unversioned_changes(published(directory), generated)
    if problems:
        raise UnversionedChange("\n".join(["schemas not written:", *problems]))
    wanted = {directory / f"{t}.json": render(s) for t, s in generated.items()}
    for stale in set(directory.glob(f"{TYPE_PREFIX}*.json")) - set(wanted):
        stale.unlink()
    for path, text in wanted.items():
        path.write_bytes(text)
    return sorted(wanted)


def _shape(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != "x-class-version"}


def unversioned_changes(
    published: dict[str, dict[str, Any]], generated: dict[str, dict[str, Any]]
) -> list[str]:
    """Why each event type whose schema changed did not get a new `class_version` (a
    changed shape must bump it, with an upcast for the rows already stored)."""
    problems = []
    for event_type in sorted(set(published) & set(generated)):
        old, new = published[event_type], generated[event_type]
        old_version = old.get("x-class-version", 1)
        new_version = new.get("x-class-version", 1)
        if new_version < old_version:
            problems.append(
                f"{event_type}: class_version went down from {old_version} to {new_version}"
            )
        elif _shape(old) != _shape(new) and new_version == old_version:
            problems.append(
                f"{event_type}: its schema changed but its class_version is still "
                f"{old_version}; set class_version = {old_version + 1} on the event class, "
                f"add an upcast_v{old_version}_v{old_version + 1}(state) for the stored "
                "rows, then run `xentree-live audit schemas --write docs/events`"
            )
    return problems
