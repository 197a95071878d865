"""Point-in-time replay: one user's read models as they stood at an instant, folded from
the event store alone with the projections' pure apply functions."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from adapters.audit.fold import fold_all, row_json
from adapters.audit.history import History, Selection, UnknownOwner
from adapters.projector.runner import PROJECTIONS
from adapters.relay.envelope import Envelope


def replay(history: History, tenant: str, user: str, until: datetime) -> dict[str, Any]:
    """Every projection's rows of (tenant, user) from the events with time <= `until`,
    with `billed_seconds` (the quota used over all periods) and the last position used.
    Raises UnknownOwner when no event of theirs exists at all, before or after `until`."""
    selection = Selection(tenant=tenant, user=user, until=until)
    last, known = 0, False

    def chosen() -> Iterator[Envelope]:
        nonlocal last, known
        for envelope in history.envelopes():
            if selection.owns(envelope):
                known = True
                if selection.matches(envelope):
                    last = envelope.position
                    yield envelope

    folded = fold_all(PROJECTIONS, chosen())
    if not known:
        raise UnknownOwner(tenant, user)
    views = {
        name: [row_json(key, row) for key, row in sorted(rows.items(), key=lambda kv: str(kv[0]))]
        for name, rows in folded.items()
    }
    return {
        "tenant_id": tenant,
        "user_id": user,
        "until": until.astimezone(UTC),
        "position": last,
        "billed_seconds": sum(row["used_seconds"] for row in views.get("quota", [])),
        **views,
    }
