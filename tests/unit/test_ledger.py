"""The usage ledger: the per-user, per-period consistency boundary for quota."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import ids
from domain.errors import QuotaExceeded, SessionAlreadyActive
from domain.ledger import UsageLedger
from domain.session import LiveSession

PERIOD_START = datetime(2024, 5, 1, tzinfo=UTC)
PERIOD_END = datetime(2024, 6, 1, tzinfo=UTC)
T0 = datetime(2024, 5, 17, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def new_ledger(limit: int = 600, max_session: int = 3_600, user: str = "user-1") -> UsageLedger:
    return UsageLedger(
        tenant_id="tenant-a",
        user_id=user,
        period_start=PERIOD_START,
        period_end=PERIOD_END,
        plan="free",
        limit_seconds=limit,
        max_session_seconds=max_session,
    )


def names(ledger: UsageLedger) -> list[str]:
    return [type(e).__name__ for e in ledger.collect_events()]


def test_opened_ledger_has_a_deterministic_id_and_full_quota() -> None:
    ledger = new_ledger(limit=600)
    assert ledger.id == ids.ledger_id("tenant-a", "user-1", PERIOD_START)
    assert ledger.id == UsageLedger.create_id("tenant-a", "user-1", PERIOD_START)
    assert ledger.id == new_ledger().id
    assert ledger.id != new_ledger(user="user-2").id
    next_month = UsageLedger.create_id("tenant-a", "user-1", PERIOD_END)
    assert next_month != ledger.id
    other_tenant = UsageLedger.create_id("tenant-b", "user-1", PERIOD_START)
    assert other_tenant != ledger.id
    assert ledger.used_seconds == 0
    assert ledger.remaining_seconds == 600
    assert ledger.active == {}
    assert names(ledger) == ["Opened"]


def test_start_records_the_active_session() -> None:
    ledger = new_ledger()
    ledger.collect_events()
    ledger.start_session("s1", "voice", at(0), max_concurrent=1)
    assert ledger.active == {"s1": ("voice", at(0))}
    events = ledger.collect_events()
    assert [type(e).__name__ for e in events] == ["SessionActivated"]
    assert isinstance(events[0], UsageLedger.SessionActivated)


def test_concurrency_limit_names_the_active_session() -> None:
    ledger = new_ledger()
    ledger.start_session("s1", "voice", at(0), max_concurrent=1)
    ledger.collect_events()
    with pytest.raises(SessionAlreadyActive) as exc:
        ledger.start_session("s2", "avatar", at(5), max_concurrent=1)
    assert exc.value.session_id == "s1"
    assert "s2" not in ledger.active
    assert ledger.collect_events() == []


def test_concurrency_limit_names_the_oldest_session() -> None:
    ledger = new_ledger()
    # Activated out of time order: the oldest by start time is named, not the first added.
    ledger.start_session("s-late", "voice", at(30), max_concurrent=3)
    ledger.start_session("s-early", "voice", at(10), max_concurrent=3)
    ledger.start_session("s-mid", "avatar", at(20), max_concurrent=3)
    with pytest.raises(SessionAlreadyActive) as exc:
        ledger.start_session("s4", "voice", at(40), max_concurrent=3)
    assert exc.value.session_id == "s-early"


def test_a_closed_session_frees_its_slot() -> None:
    ledger = new_ledger()
    ledger.start_session("s1", "voice", at(0), max_concurrent=1)
    ledger.charge("s1", 10, ended=True)
    ledger.start_session("s2", "voice", at(20), max_concurrent=1)
    assert set(ledger.active) == {"s2"}


def test_no_quota_left_refuses_start() -> None:
    ledger = new_ledger(limit=30)
    ledger.start_session("s1", "voice", at(0), max_concurrent=1)
    ledger.charge("s1", 30, ended=True)
    assert ledger.remaining_seconds == 0
    ledger.collect_events()
    with pytest.raises(QuotaExceeded) as exc:
        ledger.start_session("s2", "voice", at(40), max_concurrent=1)
    assert exc.value.period_end == PERIOD_END.isoformat()
    assert exc.value.session_id is None
    assert ledger.active == {}
    assert ledger.collect_events() == []


def test_zero_entitlement_refuses_start() -> None:
    ledger = new_ledger(limit=0)
    with pytest.raises(QuotaExceeded):
        ledger.check_can_start(max_concurrent=1)


def test_no_quota_is_reported_before_concurrency() -> None:
    ledger = new_ledger(limit=10)
    ledger.start_session("s1", "voice", at(0), max_concurrent=1)
    ledger.charge("s1", 10, ended=False)
    with pytest.raises(QuotaExceeded):
        ledger.start_session("s2", "voice", at(5), max_concurrent=1)


def test_charge_adds_usage_and_records_usage_billed() -> None:
    ledger = new_ledger(limit=600)
    ledger.start_session("s1", "voice", at(0), max_concurrent=1)
    ledger.collect_events()
    ledger.charge("s1", 15, ended=False)
    assert ledger.used_seconds == 15
    assert ledger.remaining_seconds == 585
    assert "s1" in ledger.active
    events = ledger.collect_events()
    assert [type(e).__name__ for e in events] == ["UsageBilled"]
    assert events[0].seconds == 15  # type: ignore[attr-defined]
    assert events[0].session_id == "s1"  # type: ignore[attr-defined]


def test_zero_charge_without_end_records_nothing() -> None:
    ledger = new_ledger()
    ledger.start_session("s1", "voice", at(0), max_concurrent=1)
    ledger.collect_events()
    ledger.charge("s1", 0, ended=False)
    assert ledger.collect_events() == []
    assert ledger.used_seconds == 0


def test_charge_with_end_closes_the_session() -> None:
    ledger = new_ledger()
    ledger.start_session("s1", "voice", at(0), max_concurrent=1)
    ledger.collect_events()
    ledger.charge("s1", 0, ended=True)
    assert names(ledger) == ["SessionClosed"]
    assert ledger.active == {}
    assert ledger.used_seconds == 0


def test_charge_exactly_the_remaining_is_allowed() -> None:
    ledger = new_ledger(limit=20)
    ledger.start_session("s1", "voice", at(0), max_concurrent=1)
    ledger.charge("s1", 20, ended=True)
    assert ledger.used_seconds == 20
    assert ledger.remaining_seconds == 0


def test_charge_beyond_remaining_raises_and_changes_nothing() -> None:
    ledger = new_ledger(limit=20)
    ledger.start_session("s1", "voice", at(0), max_concurrent=1)
    ledger.charge("s1", 15, ended=False)
    ledger.collect_events()
    with pytest.raises(QuotaExceeded) as exc:
        ledger.charge("s1", 6, ended=False)
    assert exc.value.session_id == "s1"
    assert exc.value.period_end == PERIOD_END.isoformat()
    with pytest.raises(QuotaExceeded):
        ledger.charge("s1", 6, ended=True)
    assert ledger.used_seconds == 15
    assert "s1" in ledger.active
    assert ledger.collect_events() == []


def test_plan_change_updates_limits_and_is_idempotent() -> None:
    ledger = new_ledger(limit=600, max_session=3_600)
    ledger.start_session("s1", "voice", at(0), max_concurrent=1)
    ledger.charge("s1", 500, ended=False)
    ledger.collect_events()
    ledger.change_plan("free", 600, 3_600)
    assert ledger.collect_events() == []
    ledger.change_plan("pro", 36_000, 3_600)
    assert names(ledger) == ["PlanChanged"]
    assert (ledger.plan, ledger.limit_seconds, ledger.max_session_seconds) == (
        "pro",
        36_000,
        3_600,
    )
    assert ledger.remaining_seconds == 35_500
    # A downgrade below the usage leaves nothing remaining (never negative).
    ledger.change_plan("free", 100, 3_600)
    assert ledger.remaining_seconds == 0


def test_ledger_replays_to_the_same_state() -> None:
    ledger = new_ledger()
    ledger.start_session("s1", "voice", at(0), max_concurrent=2)
    ledger.start_session("s2", "avatar", at(1), max_concurrent=2)
    ledger.charge("s1", 15, ended=False)
    ledger.charge("s2", 7, ended=True)
    ledger.change_plan("pro", 36_000, 3_600)
    replayed: UsageLedger | None = None
    for e in ledger.collect_events():
        replayed = e.mutate(replayed)  # type: ignore[arg-type]
    assert replayed is not None
    assert replayed.id == ledger.id
    assert replayed.used_seconds == 22
    assert replayed.active == {"s1": ("voice", at(0))}
    assert replayed.limit_seconds == 36_000


# A property over the ledger and sessions together: interleaved heartbeats of several
# sessions sharing one ledger never overspend the entitlement, and the ledger's usage is
# always the sum of the sessions' billed seconds.


def new_session(started: datetime, max_session: int) -> LiveSession:
    return LiveSession(
        tenant_id="tenant-a",
        user_id="user-1",
        session_type="voice",
        started_at=started,
        ledger_id=uuid4(),
        max_session_seconds=max_session,
        idle_timeout_seconds=60,
        credential="api_key",
        credential_id=None,
    )


@settings(max_examples=200)
@given(
    limit=st.integers(1, 400),
    max_session=st.integers(1, 400),
    steps=st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 40_000_000), st.booleans()),
        min_size=1,
        max_size=60,
    ),
)
def test_sessions_sharing_a_ledger_never_overspend(
    limit: int, max_session: int, steps: list[tuple[int, int, bool]]
) -> None:
    ledger = new_ledger(limit=limit, max_session=max_session)
    sessions: list[LiveSession] = []
    now = T0
    for which, advance_us, client_end in steps:
        now += timedelta(microseconds=advance_us)
        if which >= len(sessions):
            try:
                s = new_session(now, max_session)
                ledger.start_session(str(s.id), "voice", now, max_concurrent=2)
            except QuotaExceeded:
                assert ledger.remaining_seconds == 0
                continue
            except SessionAlreadyActive as exc:
                assert len(ledger.active) == 2
                oldest = min((x for x in sessions if x.is_active), key=lambda x: x.started_at)
                assert exc.session_id == str(oldest.id)
                continue
            sessions.append(s)
            continue
        s = sessions[which]
        if not s.is_active:
            continue
        before = s.session_seconds
        if client_end:
            s.end("client", now, ledger.remaining_seconds)
        else:
            s.apply_bill(s.decide_bill(now, ledger.remaining_seconds))
        ledger.charge(str(s.id), s.session_seconds - before, ended=not s.is_active)
        assert ledger.used_seconds <= limit
    assert ledger.used_seconds == sum(s.session_seconds for s in sessions)
    assert set(ledger.active) == {str(s.id) for s in sessions if s.is_active}
    assert all(s.session_seconds <= max_session for s in sessions)


def test_a_copy_shares_no_mutable_state_with_its_original() -> None:
    import copy

    ledger = new_ledger()
    ledger.start_session("s1", "voice", at(0), max_concurrent=2)
    ledger.collect_events()
    active_before = dict(ledger.active)
    c = copy.deepcopy(ledger)
    c.start_session("s2", "avatar", at(1), max_concurrent=2)
    c.charge("s1", 10, ended=True)
    assert ledger.active == active_before and ledger.used_seconds == 0
    assert not ledger.pending_events and len(c.pending_events) == 2
    assert set(c.active) == {"s2"}
