"""The quota and sessions projections as pure functions of the event stream."""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.relay.envelope import Envelope
from domain.billing import Bill
from domain.ledger import UsageLedger
from domain.session import LiveSession
from projections import quota, sessions
from projections.stream import Step, step
from tests.support.envelopes import envelopes_of

PERIOD_START = datetime(2026, 11, 1, tzinfo=UTC)
PERIOD_END = datetime(2026, 12, 1, tzinfo=UTC)
T0 = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


def new_ledger(limit: int = 600) -> UsageLedger:
    return UsageLedger(
        tenant_id="tenant-a",
        user_id="user-1",
        period_start=PERIOD_START,
        period_end=PERIOD_END,
        plan="free",
        limit_seconds=limit,
        max_session_seconds=3600,
    )


def new_session(ledger: UsageLedger, at: datetime = T0) -> LiveSession:
    session = LiveSession(
        tenant_id="tenant-a",
        user_id="user-1",
        session_type="voice",
        started_at=at,
        ledger_id=ledger.id,
        max_session_seconds=3600,
        idle_timeout_seconds=60,
        credential="bearer",
        credential_id=None,
    )
    ledger.start_session(str(session.id), "voice", at, max_concurrent=5)
    return session


def fold(apply: Any, events: Iterable[Envelope], row: Any = None) -> Any:
    for event in events:
        new = apply(row, event)
        if new is not None:
            row = new
    return row


def quota_matches(row: quota.QuotaRow, ledger: UsageLedger) -> None:
    assert (row.tenant_id, row.user_id) == (ledger.tenant_id, ledger.user_id)
    assert (row.period_start, row.period_end) == (ledger.period_start, ledger.period_end)
    assert (row.plan, row.limit_seconds, row.max_session_seconds) == (
        ledger.plan, ledger.limit_seconds, ledger.max_session_seconds
    )
    assert row.used_seconds == ledger.used_seconds
    assert [(a.session_id, a.session_type, a.started_at) for a in row.active] == [
        (sid, kind, at) for sid, (kind, at) in ledger.active.items()
    ]
    assert row.version == ledger.version


def test_step_by_version() -> None:
    assert step(None, 1) is Step.APPLY
    assert step(None, 2) is Step.GAP
    assert step(3, 4) is Step.APPLY
    assert step(3, 3) is Step.DUPLICATE and step(3, 1) is Step.DUPLICATE
    assert step(3, 5) is Step.GAP


def test_quota_follows_the_ledger() -> None:
    ledger = new_ledger()
    session = new_session(ledger)
    ledger.charge(str(session.id), 30, ended=False)
    ledger.change_plan("pro", 36_000, 7200)
    ledger.charge(str(session.id), 12, ended=True)
    events = list(envelopes_of(ledger, session))
    row = fold(quota.apply, events)
    quota_matches(row, ledger)
    assert row.used_seconds == 42 and row.active == () and row.plan == "pro"
    assert row.position == max(e.position for e in events if e.aggregatetype == "UsageLedger")


def test_sessions_follow_the_session() -> None:
    ledger = new_ledger()
    session = new_session(ledger)
    session.apply_bill(Bill(seconds=10, bill_point=T0 + timedelta(seconds=10)))
    session.end("client", T0 + timedelta(seconds=15), remaining_quota=500)
    row = fold(sessions.apply, envelopes_of(session, ledger))
    assert (row.tenant_id, row.user_id, row.session_type) == ("tenant-a", "user-1", "voice")
    assert row.started_at == T0
    assert row.session_seconds == session.session_seconds == 15
    assert row.last_billed_at == session.bill_point
    assert (row.ended_at, row.end_reason) == (session.ended_at, "client")
    assert row.version == session.version


def test_duplicates_change_nothing() -> None:
    ledger = new_ledger()
    session = new_session(ledger)
    ledger.charge(str(session.id), 30, ended=False)
    events = list(envelopes_of(ledger))
    once = fold(quota.apply, events)
    assert all(quota.apply(once, e) is None for e in events)  # redelivered
    assert fold(quota.apply, events, once) == once  # republished from the start
    assert fold(quota.apply, [e for e in events for _ in (0, 1)]) == once  # each twice


def test_a_gap_is_not_applied_until_the_missing_event_arrives() -> None:
    ledger = new_ledger()
    session = new_session(ledger)
    ledger.charge(str(session.id), 30, ended=False)
    opened, activated, billed = envelopes_of(ledger)
    row = quota.apply(None, opened)
    assert row is not None
    assert quota.apply(row, billed) is None
    assert quota.apply(None, activated) is None  # nothing to build on
    row = fold(quota.apply, [activated, billed], row)
    assert row.used_seconds == 30 and row.version == 3


def test_other_aggregates_are_ignored() -> None:
    ledger = new_ledger()
    session = new_session(ledger)
    assert all(quota.apply(None, e) is None for e in envelopes_of(session))
    assert all(sessions.apply(None, e) is None for e in envelopes_of(ledger))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["start", "bill", "end", "plan"]), st.integers(0, 90)),
             max_size=30),
    st.randoms(use_true_random=False),
)
def test_any_redelivery_gives_the_ledger_state(
    ops: list[tuple[str, int]], rnd: random.Random
) -> None:
    ledger = new_ledger(limit=1000)
    active: list[LiveSession] = []
    clock = T0
    for op, n in ops:
        clock += timedelta(seconds=n)
        if op == "start":
            if len(active) < 5 and ledger.remaining_seconds > 0:
                active.append(new_session(ledger, clock))
        elif op in ("bill", "end") and active:
            session = active[0]
            seconds = min(n, ledger.remaining_seconds)
            ledger.charge(str(session.id), seconds, ended=op == "end")
            if op == "end":
                active.pop(0)
        elif op == "plan":
            ledger.change_plan("pro" if n % 2 else "free", 1000 + n, 3600)
    events = list(envelopes_of(ledger))
    # At-least-once delivery keeps each aggregate's order but may repeat any prefix.
    delivered: list[Envelope] = []
    for i, event in enumerate(events):
        if rnd.random() < 0.3:
            delivered.extend(events[rnd.randint(0, i) : i])
        delivered.append(event)
    quota_matches(fold(quota.apply, delivered), ledger)
