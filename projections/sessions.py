"""The sessions read model: one row per live session, for the caller's session list."""

from __future__ import annotations

from datetime import datetime

import msgspec

from projections.stream import Event, Step, event_name, step, timestamp

AGGREGATE_TYPE = "LiveSession"


class SessionRow(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    user_id: str
    session_type: str
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    session_seconds: int
    last_billed_at: datetime | None
    version: int
    position: int


def apply(row: SessionRow | None, event: Event) -> SessionRow | None:
    """The row after `event`, or None when the event does not change it (a duplicate, a
    gap, or another aggregate's event)."""
    if event.type.rpartition(".")[0] != f"xentree.live.{AGGREGATE_TYPE}":
        return None
    if step(row.version if row else None, event.aggregateversion) is not Step.APPLY:
        return None
    d, name = event.data, event_name(event)
    if row is None:
        if name != "Started":
            return None
        return SessionRow(
            tenant_id=d["tenant_id"],
            user_id=d["user_id"],
            session_type=d["session_type"],
            started_at=timestamp(d["started_at"]),
            ended_at=None,
            end_reason=None,
            session_seconds=0,
            last_billed_at=None,
            version=event.aggregateversion,
            position=event.position,
        )
    tracked = msgspec.structs.replace(row, version=event.aggregateversion, position=event.position)
    if name == "Billed":
        return msgspec.structs.replace(
            tracked,
            session_seconds=row.session_seconds + d["seconds"],
            last_billed_at=timestamp(d["bill_point"]),
        )
    if name == "Ended":
        return msgspec.structs.replace(
            tracked, ended_at=timestamp(d["ended_at"]), end_reason=d["reason"]
        )
    return tracked
