"""The quota read model: one row per usage ledger (a user's billing period), fed by the
ledger's events, so it always equals the write side's ledger at the same version."""

from __future__ import annotations

from datetime import datetime

import msgspec

from projections.stream import Event, Step, event_name, step, timestamp

AGGREGATE_TYPE = "UsageLedger"


class ActiveSession(msgspec.Struct, frozen=True):
    session_id: str
    session_type: str
    started_at: datetime


class QuotaRow(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    user_id: str
    period_start: datetime
    period_end: datetime
    plan: str
    limit_seconds: int
    used_seconds: int
    max_session_seconds: int
    active: tuple[ActiveSession, ...]
    version: int
    position: int


def apply(row: QuotaRow | None, event: Event) -> QuotaRow | None:
    """The row after `event`, or None when the event does not change it (a duplicate, a
    gap, or another aggregate's event)."""
    if event.type.rpartition(".")[0] != f"xentree.live.{AGGREGATE_TYPE}":
        return None
    if step(row.version if row else None, event.aggregateversion) is not Step.APPLY:
        return None
    d, name = event.data, event_name(event)
    if row is None:
        if name != "Opened":
            return None
        return QuotaRow(
            tenant_id=d["tenant_id"],
            user_id=d["user_id"],
            period_start=timestamp(d["period_start"]),
            period_end=timestamp(d["period_end"]),
            plan=d["plan"],
            limit_seconds=d["limit_seconds"],
            used_seconds=0,
            max_session_seconds=d["max_session_seconds"],
            active=(),
            version=event.aggregateversion,
            position=event.position,
        )
    tracked = msgspec.structs.replace(row, version=event.aggregateversion, position=event.position)
    if name == "SessionActivated":
        session = ActiveSession(d["session_id"], d["session_type"], timestamp(d["started_at"]))
        return msgspec.structs.replace(tracked, active=(*row.active, session))
    if name == "UsageBilled":
        return msgspec.structs.replace(tracked, used_seconds=row.used_seconds + d["seconds"])
    if name == "SessionClosed":
        return msgspec.structs.replace(
            tracked,
            used_seconds=row.used_seconds + d["seconds"],
            active=tuple(s for s in row.active if s.session_id != d["session_id"]),
        )
    if name == "PlanChanged":
        return msgspec.structs.replace(
            tracked,
            plan=d["plan"],
            limit_seconds=d["limit_seconds"],
            max_session_seconds=d["max_session_seconds"],
        )
    # A ledger event this view does not show still moves it to the next version.
    return tracked
