"""The LiveSession aggregate: started, billed in whole seconds, ended once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.billing import Bill
from domain.errors import SessionNotActive
from domain.session import LiveSession

T0 = datetime(2024, 5, 17, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def new_session(
    *, max_session_seconds: int = 3_600, idle_timeout_seconds: int = 60, started: float = 0
) -> LiveSession:
    return LiveSession(
        tenant_id="tenant-a",
        user_id="user-1",
        session_type="voice",
        started_at=at(started),
        ledger_id=uuid4(),
        max_session_seconds=max_session_seconds,
        idle_timeout_seconds=idle_timeout_seconds,
        credential="api_key",
        credential_id="key-1",
    )


def event_names(session: LiveSession) -> list[str]:
    return [type(e).__name__ for e in session.collect_events()]


def heartbeat(session: LiveSession, now: float, remaining: int) -> Bill:
    b = session.decide_bill(at(now), remaining)
    session.apply_bill(b, seen_at=at(now))
    return b


def test_started_session_state_and_event() -> None:
    s = new_session(started=5)
    assert s.is_active
    assert s.bill_point == s.started_at == at(5)
    assert s.session_seconds == 0
    assert s.ended_at is None and s.end_reason is None
    assert s.owned_by("tenant-a", "user-1")
    assert not s.owned_by("tenant-a", "user-2")
    assert not s.owned_by("tenant-b", "user-1")
    s.check_active()  # does not raise
    events = s.collect_events()
    assert [type(e).__name__ for e in events] == ["Started"]
    assert isinstance(events[0], LiveSession.Started)
    assert events[0].originator_version == 1


def test_two_sessions_get_distinct_ids() -> None:
    assert new_session().id != new_session().id


def test_heartbeat_bills_and_records_a_billed_event() -> None:
    s = new_session()
    s.collect_events()
    b = heartbeat(s, 15.4, remaining=600)
    assert b.seconds == 15
    assert s.session_seconds == 15
    assert s.bill_point == at(15)
    assert s.is_active
    events = s.collect_events()
    assert len(events) == 1
    assert isinstance(events[0], LiveSession.Billed)
    assert events[0].seconds == 15  # type: ignore[attr-defined]
    assert events[0].bill_point == at(15)  # type: ignore[attr-defined]


def test_zero_second_bill_records_only_the_heartbeat_moment() -> None:
    s = new_session()
    s.collect_events()
    b = heartbeat(s, 0.5, remaining=600)
    assert b.seconds == 0
    assert event_names(s) == ["Billed"]
    assert (s.bill_point, s.last_seen, s.session_seconds) == (at(0), at(0.5), 0)
    s.collect_events()
    heartbeat(s, 0.5, remaining=600)  # the same moment again: nothing new to record
    assert s.collect_events() == []


def test_a_late_heartbeat_cannot_revive_an_idle_session() -> None:
    # Silent for the idle timeout: over, as if the reaper had come first.
    s = new_session(idle_timeout_seconds=60)
    heartbeat(s, 10, remaining=600)
    s.collect_events()
    heartbeat(s, 70, remaining=600)
    assert (s.is_active, s.end_reason, s.session_seconds) == (False, "idle_timeout", 10)
    assert s.ended_at == at(10)
    assert event_names(s) == ["Ended"]


def test_idle_window_runs_from_the_last_heartbeat_not_the_bill_point() -> None:
    # Heartbeats 59.5 s apart keep a 60 s session alive although the unbilled
    # fractions put the bill point further back.
    s = new_session(idle_timeout_seconds=60)
    for n in range(1, 5):
        heartbeat(s, 59.5 * n, remaining=600)
        assert s.is_active
    assert s.session_seconds == 238


def test_heartbeat_reaching_the_quota_ends_the_session_at_the_limit() -> None:
    s = new_session()
    heartbeat(s, 15, remaining=20)
    s.collect_events()
    b = heartbeat(s, 30.5, remaining=5)
    assert b.seconds == 5
    assert s.session_seconds == 20
    assert not s.is_active
    assert s.end_reason == "quota_exceeded"
    assert s.ended_at == at(20)
    assert event_names(s) == ["Billed", "Ended"]
    with pytest.raises(SessionNotActive) as exc:
        s.decide_bill(at(31), 100)
    assert exc.value.end_reason == "quota_exceeded"
    assert exc.value.session_id == str(s.id)


def test_heartbeat_reaching_max_duration_ends_the_session() -> None:
    s = new_session(max_session_seconds=30)
    heartbeat(s, 15, remaining=600)
    heartbeat(s, 34, remaining=585)
    assert s.session_seconds == 30
    assert s.end_reason == "max_duration"
    assert s.ended_at == at(30)


def test_client_end_bills_the_last_gap_and_ends_now() -> None:
    s = new_session()
    heartbeat(s, 15, remaining=600)
    s.collect_events()
    s.end("client", at(22.75), remaining_quota=585)
    assert not s.is_active
    assert s.session_seconds == 22
    assert s.end_reason == "client"
    assert s.ended_at == at(22.75)
    assert event_names(s) == ["Billed", "Ended"]
    assert s.summary() == {
        "session_id": str(s.id),
        "session_type": "voice",
        "started_at": at(0),
        "ended_at": at(22.75),
        "end_reason": "client",
        "session_seconds": 22,
    }


def test_end_with_nothing_to_bill_records_only_the_end() -> None:
    s = new_session()
    s.collect_events()
    s.end("client_disconnected", at(0.3), remaining_quota=600)
    assert event_names(s) == ["Ended"]
    assert s.session_seconds == 0
    assert s.end_reason == "client_disconnected"


def test_end_after_a_limit_was_passed_keeps_the_limit_reason() -> None:
    s = new_session()
    s.end("client", at(50), remaining_quota=10)
    assert s.end_reason == "quota_exceeded"
    assert s.ended_at == at(10)
    assert s.session_seconds == 10


def test_end_after_a_long_silence_is_an_idle_end_at_the_last_heartbeat() -> None:
    s = new_session(idle_timeout_seconds=60)
    heartbeat(s, 30, remaining=600)
    s.end("client", at(1_000), remaining_quota=600)
    assert s.session_seconds == 30
    assert (s.end_reason, s.ended_at) == ("idle_timeout", at(30))


def test_ending_twice_raises_session_not_active_and_changes_nothing() -> None:
    s = new_session()
    s.end("client", at(10), remaining_quota=600)
    s.collect_events()
    with pytest.raises(SessionNotActive) as exc:
        s.end("token_revoked", at(20), remaining_quota=600)
    assert exc.value.end_reason == "client"
    assert s.end_reason == "client"
    assert s.ended_at == at(10)
    assert s.session_seconds == 10
    assert s.collect_events() == []


def test_reap_idle_session_ends_at_the_bill_point() -> None:
    s = new_session()
    heartbeat(s, 15.5, remaining=600)
    # The idle window runs from the heartbeat at 15.5, not from the bill point at 15.
    assert s.decide_reap(at(75.4), 585) is None
    s.collect_events()
    b = s.decide_reap(at(75.5), 585)
    assert b is not None
    s.apply_bill(b)
    assert s.end_reason == "idle_timeout"
    assert s.ended_at == at(15)
    assert s.session_seconds == 15
    assert event_names(s) == ["Ended"]


def test_reap_bills_to_a_limit_inside_the_idle_window() -> None:
    s = new_session()
    heartbeat(s, 15, remaining=25)
    b = s.decide_reap(at(40), 10)
    assert b is not None
    s.apply_bill(b)
    assert s.end_reason == "quota_exceeded"
    assert s.ended_at == at(25)
    assert s.session_seconds == 25


def test_reap_of_an_ended_session_does_nothing() -> None:
    s = new_session()
    s.end("client", at(5), remaining_quota=600)
    assert s.decide_reap(at(10_000), 600) is None


def test_ends_at_uses_the_earlier_limit() -> None:
    s = new_session(max_session_seconds=100)
    heartbeat(s, 40, remaining=600)
    assert s.ends_at(600) == at(100)
    assert s.ends_at(30) == at(70)
    assert s.ends_at(0) == at(40)


def test_events_replay_to_the_same_state() -> None:
    s = new_session()
    heartbeat(s, 15.2, remaining=600)
    heartbeat(s, 31.9, remaining=585)
    s.end("client", at(40), remaining_quota=569)
    events = s.collect_events()
    assert [type(e).__name__ for e in events] == ["Started", "Billed", "Billed", "Billed", "Ended"]
    replayed: LiveSession | None = None
    for e in events:
        replayed = e.mutate(replayed)  # type: ignore[arg-type]
    assert replayed is not None
    assert replayed.summary() == s.summary()
    assert replayed.bill_point == s.bill_point
    assert replayed.version == s.version == 5


@settings(max_examples=200)
@given(
    gaps=st.lists(st.integers(0, 90_000_000), min_size=1, max_size=30),
    limit=st.integers(0, 1_000),
    max_session=st.integers(1, 1_000),
)
def test_aggregate_never_bills_past_its_limits(
    gaps: list[int], limit: int, max_session: int
) -> None:
    s = new_session(max_session_seconds=max_session)
    used = 0
    now = at(0)
    for g in gaps:
        now += timedelta(microseconds=g)
        if not s.is_active:
            break
        heartbeat_bill = s.decide_bill(now, limit - used)
        s.apply_bill(heartbeat_bill)
        used += heartbeat_bill.seconds
        assert s.session_seconds == used
        assert s.bill_point <= now
    assert used <= limit
    assert used <= max_session
    assert used <= int((now - at(0)).total_seconds())
    if not s.is_active:
        assert s.end_reason in ("quota_exceeded", "max_duration", "idle_timeout")
        if s.end_reason != "idle_timeout":
            assert used == min(limit, max_session)
        assert s.ended_at == s.bill_point <= now


def test_a_copy_shares_no_mutable_state_with_its_original() -> None:
    """The repository hands commands a copy of each cached aggregate; a command on the
    copy (billed, ended) must leave the cached original as it was."""
    import copy
    from datetime import date
    from uuid import UUID

    s = new_session()
    s.collect_events()
    before = dict(s.__dict__)
    c = copy.deepcopy(s)
    c.apply_bill(c.decide_bill(at(30), 585), seen_at=at(30))
    c.end("client", at(40), 585)
    assert c.pending_events and not s.pending_events
    assert s.__dict__ == before and s.is_active and c.ended_at is not None
    # The shortcut relies on every attribute being an immutable value.
    immutable = (str, int, float, bool, type(None), datetime, date, UUID)
    for name, value in s.__dict__.items():
        if name != "_pending_events":
            assert isinstance(value, immutable), (name, type(value))
