"""Fill the event store fast for the growth scenario, through the write side itself.

Each synthetic user gets a month's ledger and one finished session with a heartbeat every
15 s (the session's Billed and the ledger's UsageBilled per heartbeat), built with the
domain aggregates and saved through `LiveApplication.save` many aggregates per call (one
transaction each), so the rows, indexes and snapshots are the ones production would write
and the relay and projections see ordinary events."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

from adapters.bootstrap import build_application
from application.settings import Settings
from domain.ledger import UsageLedger
from domain.periods import period_bounds
from domain.session import LiveSession

HEARTBEATS_PER_SESSION = 20
USERS_PER_SAVE = 25


def _user_aggregates(tenant: str, user: str, start: datetime) -> list[UsageLedger | LiveSession]:
    period_start, period_end = period_bounds(start)
    ledger = UsageLedger(
        tenant_id=tenant, user_id=user, period_start=period_start, period_end=period_end,
        plan="enterprise", limit_seconds=10_000_000, max_session_seconds=86_400,
    )
    session = LiveSession(
        tenant_id=tenant, user_id=user, session_type="voice", started_at=start,
        ledger_id=ledger.id, max_session_seconds=86_400, idle_timeout_seconds=3_600,
        credential="bearer", credential_id=None,
    )
    ledger.start_session(str(session.id), "voice", start, 1)
    at = start
    for _ in range(HEARTBEATS_PER_SESSION):
        at += timedelta(seconds=15)
        bill = session.decide_bill(at, ledger.remaining_seconds)
        session.apply_bill(bill, seen_at=at)
        ledger.charge(str(session.id), bill.seconds, ended=False)
    before = session.session_seconds
    session.end("client", at + timedelta(seconds=5), ledger.remaining_seconds)
    ledger.charge(str(session.id), session.session_seconds - before, ended=True)
    return [ledger, session]


def count_events(settings: Settings) -> int:
    """The highest notification id: the number of events stored (ids have no gaps here
    worth counting)."""
    app = build_application(settings)
    try:
        return int(app.recorder.max_notification_id() or 0)
    finally:
        app.close()


def preload(settings: Settings, events: int) -> tuple[int, float]:
    """Save at least `events` more events; (events saved, seconds taken)."""
    app = build_application(settings)
    now = datetime.now(UTC)
    start = max(period_bounds(now)[0] + timedelta(seconds=1), now - timedelta(minutes=10))
    saved = 0
    started = time.monotonic()
    try:
        while saved < events:
            aggregates: list[UsageLedger | LiveSession] = []
            for _ in range(USERS_PER_SAVE):
                aggregates += _user_aggregates("bench-growth", uuid.uuid4().hex, start)
            saved += sum(len(a.pending_events) for a in aggregates)
            app.save(*aggregates)
    finally:
        app.close()
    return saved, time.monotonic() - started
