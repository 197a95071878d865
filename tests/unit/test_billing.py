"""Billing rules (SPEC section 4): whole seconds of server time, idle cap, hard limits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from domain.billing import (
    END_REASONS,
    Bill,
    bill_gap,
    reap_decision,
    reap_due,
    seconds_allowed,
    session_ends_at,
)

T0 = datetime(2024, 5, 17, 12, 0, 0, tzinfo=UTC)
US = 1_000_000


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def bill(
    *,
    bp: float = 0.0,
    now: float,
    idle: int = 60,
    remaining: int = 10_000,
    session_seconds: int = 0,
    max_session: int = 3_600,
) -> Bill:
    return bill_gap(
        bill_point=at(bp),
        now=at(now),
        idle_timeout_seconds=idle,
        remaining_quota=remaining,
        session_seconds=session_seconds,
        max_session_seconds=max_session,
    )


def reap(
    *,
    bp: float = 0.0,
    now: float,
    idle: int = 60,
    remaining: int = 10_000,
    session_seconds: int = 0,
    max_session: int = 3_600,
) -> Bill | None:
    return reap_decision(
        bill_point=at(bp),
        now=at(now),
        idle_timeout_seconds=idle,
        remaining_quota=remaining,
        session_seconds=session_seconds,
        max_session_seconds=max_session,
    )


# --------------------------------------------------------------------------- bill_gap


def test_end_reasons_are_the_spec_list() -> None:
    assert END_REASONS == (
        "client",
        "idle_timeout",
        "quota_exceeded",
        "max_duration",
        "token_revoked",
        "client_disconnected",
        "upstream_lost",
    )


def test_bills_whole_seconds_and_carries_the_fraction() -> None:
    b = bill(now=15.7)
    assert b == Bill(seconds=15, bill_point=at(15))
    assert b.end_reason is None and b.ended_at is None
    # The 0.7 s carried over is billed by the next heartbeat.
    b2 = bill(bp=15, now=30.4, session_seconds=15)
    assert b2.seconds == 15
    assert b2.bill_point == at(30)


def test_sub_second_gap_bills_nothing_and_keeps_the_bill_point() -> None:
    b = bill(now=0.999)
    assert b == Bill(seconds=0, bill_point=at(0))


def test_fractions_accumulate_to_whole_seconds() -> None:
    bp = at(0)
    total = 0
    for i in range(1, 11):  # ten heartbeats 1.3 s apart: 13 s elapsed
        b = bill_gap(
            bill_point=bp,
            now=at(1.3 * i),
            idle_timeout_seconds=60,
            remaining_quota=10_000,
            session_seconds=total,
            max_session_seconds=3_600,
        )
        total += b.seconds
        bp = b.bill_point
    assert total == 13
    assert bp == at(13)


def test_now_before_bill_point_bills_nothing() -> None:
    b = bill(bp=10, now=5)
    assert b.seconds == 0
    assert b.bill_point == at(10)
    assert b.end_reason is None


def test_gap_exactly_at_idle_timeout_is_billed_in_full() -> None:
    b = bill(now=60, idle=60)
    assert b == Bill(seconds=60, bill_point=at(60))


def test_gap_beyond_idle_timeout_is_capped_and_the_excess_forgiven() -> None:
    b = bill(now=500.25, idle=60)
    assert b.seconds == 60
    assert b.end_reason is None
    # The bill point jumps to now: the idle excess (440.25 s) is never billed later.
    assert b.bill_point == at(500.25)
    nxt = bill(bp=500.25, now=510.25, idle=60, session_seconds=60)
    assert nxt.seconds == 10


def test_quota_limit_ends_exactly_at_the_limit() -> None:
    b = bill(bp=100, now=130.5, remaining=12, session_seconds=100)
    assert b.seconds == 12
    assert b.end_reason == "quota_exceeded"
    assert b.ended_at == at(112)
    assert b.bill_point == at(112)


def test_reaching_the_quota_exactly_ends_the_session() -> None:
    b = bill(now=12.4, remaining=12)
    assert b.seconds == 12
    assert b.end_reason == "quota_exceeded"
    assert b.ended_at == at(12)


def test_just_below_the_quota_does_not_end() -> None:
    b = bill(now=11.999, remaining=12)
    assert b.seconds == 11
    assert b.end_reason is None
    assert b.bill_point == at(11)


def test_max_duration_limit_ends_exactly_at_the_limit() -> None:
    b = bill(bp=3_590, now=3_620, max_session=3_600, session_seconds=3_590)
    assert b.seconds == 10
    assert b.end_reason == "max_duration"
    assert b.ended_at == at(3_600)


def test_the_nearer_limit_wins() -> None:
    by_quota = bill(now=50, remaining=5, max_session=3_600, session_seconds=3_580)
    assert (by_quota.seconds, by_quota.end_reason) == (5, "quota_exceeded")
    by_duration = bill(now=50, remaining=30, max_session=3_600, session_seconds=3_580)
    assert (by_duration.seconds, by_duration.end_reason) == (20, "max_duration")


def test_limit_within_a_capped_gap_ends_at_the_limit_not_at_now() -> None:
    b = bill(now=1_000, idle=60, remaining=25)
    assert b.seconds == 25
    assert b.end_reason == "quota_exceeded"
    assert b.ended_at == at(25)


def test_no_quota_left_ends_at_the_bill_point_with_nothing_billed() -> None:
    b = bill(bp=40, now=40.5, remaining=0)
    assert b.seconds == 0
    assert b.end_reason == "quota_exceeded"
    assert b.ended_at == at(40)


def test_negative_remaining_quota_bills_nothing() -> None:
    b = bill(now=30, remaining=-5)
    assert b.seconds == 0
    assert b.end_reason == "quota_exceeded"


def test_session_past_its_maximum_bills_nothing() -> None:
    # e.g. the plan's maximum was lowered while the session ran
    b = bill(now=30, session_seconds=4_000, max_session=3_600)
    assert b.seconds == 0
    assert b.end_reason == "max_duration"
    assert b.ended_at == at(0)


def test_tie_between_limits_reports_quota() -> None:
    assert seconds_allowed(remaining_quota=10, session_seconds=90, max_session_seconds=100) == (
        10,
        "quota_exceeded",
    )
    assert seconds_allowed(remaining_quota=11, session_seconds=90, max_session_seconds=100) == (
        10,
        "max_duration",
    )


# --------------------------------------------------------------------------- session_ends_at


@pytest.mark.parametrize(
    ("remaining", "session_seconds", "max_session", "expected"),
    [
        (600, 0, 3_600, 600),  # quota first
        (36_000, 0, 3_600, 3_600),  # max length first
        (36_000, 3_000, 3_600, 600),  # max length, part used
        (100, 3_000, 3_600, 100),
        (0, 0, 3_600, 0),
        (-10, 0, 3_600, 0),
        (50, 3_700, 3_600, 0),
    ],
)
def test_session_ends_at_is_the_earlier_limit(
    remaining: int, session_seconds: int, max_session: int, expected: int
) -> None:
    ends = session_ends_at(
        bill_point=at(10),
        remaining_quota=remaining,
        session_seconds=session_seconds,
        max_session_seconds=max_session,
    )
    assert ends == at(10 + expected)


@given(
    remaining=st.integers(-100, 100_000),
    session_seconds=st.integers(0, 10_000),
    max_session=st.integers(1, 10_000),
    bp_us=st.integers(0, 10**10),
)
def test_session_ends_at_property(
    remaining: int, session_seconds: int, max_session: int, bp_us: int
) -> None:
    bp = T0 + timedelta(microseconds=bp_us)
    ends = session_ends_at(
        bill_point=bp,
        remaining_quota=remaining,
        session_seconds=session_seconds,
        max_session_seconds=max_session,
    )
    expected = min(max(0, remaining), max(0, max_session - session_seconds))
    assert ends == bp + timedelta(seconds=expected)
    # A heartbeat at that moment bills exactly to it and ends the session.
    b = bill_gap(
        bill_point=bp,
        now=ends,
        idle_timeout_seconds=10**9,
        remaining_quota=remaining,
        session_seconds=session_seconds,
        max_session_seconds=max_session,
    )
    assert b.ended_at == ends
    assert b.seconds == expected


# --------------------------------------------------------------------------- reap_decision


def test_reaper_leaves_a_fresh_session_alone() -> None:
    assert reap(now=59.9, idle=60) is None


def test_reaper_ends_an_idle_session_at_its_last_bill_point_with_nothing_billed() -> None:
    b = reap(bp=45, now=105, idle=60)
    assert b == Bill(seconds=0, bill_point=at(45), end_reason="idle_timeout", ended_at=at(45))
    b = reap(bp=45, now=10_000, idle=60)
    assert b is not None and b.seconds == 0 and b.end_reason == "idle_timeout"


def test_reaper_bills_to_a_quota_limit_inside_the_idle_window() -> None:
    b = reap(bp=45, now=55, idle=60, remaining=8)
    assert b == Bill(seconds=8, bill_point=at(53), end_reason="quota_exceeded", ended_at=at(53))


def test_reaper_bills_to_a_duration_limit_inside_the_idle_window() -> None:
    b = reap(bp=45, now=200, idle=60, session_seconds=3_570, max_session=3_600)
    assert b == Bill(seconds=30, bill_point=at(75), end_reason="max_duration", ended_at=at(75))


def test_reaper_waits_for_a_limit_that_has_not_come_yet() -> None:
    assert reap(bp=45, now=52.9, idle=60, remaining=8) is None


def test_reaper_ignores_a_limit_beyond_the_idle_window() -> None:
    b = reap(bp=0, now=60, idle=60, remaining=61)
    assert b is not None
    assert b.end_reason == "idle_timeout"
    assert b.seconds == 0


def test_reaper_ends_a_session_with_no_quota_left_immediately() -> None:
    b = reap(bp=5, now=5, remaining=0)
    assert b == Bill(seconds=0, bill_point=at(5), end_reason="quota_exceeded", ended_at=at(5))


@given(
    bp_us=st.integers(0, 10**9),
    seen_us=st.integers(-(10**7), 10**8),
    before_us=st.integers(1, 10**8),
    idle=st.integers(1, 300),
    remaining=st.integers(-10, 5_000),
    session_seconds=st.integers(0, 5_000),
    max_session=st.integers(1, 5_000),
)
def test_reap_due_is_the_first_moment_the_reaper_ends_the_session(
    bp_us: int,
    seen_us: int,
    before_us: int,
    idle: int,
    remaining: int,
    session_seconds: int,
    max_session: int,
) -> None:
    """The reaper may leave a session alone until its due time, and no longer."""
    state = {
        "bill_point": T0 + timedelta(microseconds=bp_us),
        "idle_timeout_seconds": idle,
        "remaining_quota": remaining,
        "session_seconds": session_seconds,
        "max_session_seconds": max_session,
        "last_seen": T0 + timedelta(microseconds=bp_us + seen_us),
    }
    due = reap_due(**state)
    assert reap_decision(now=due, **state) is not None
    assert reap_decision(now=due - timedelta(microseconds=before_us), **state) is None


@given(
    bp_us=st.integers(0, 10**9),
    delta_us=st.integers(-(10**7), 10**9),
    idle=st.integers(1, 300),
    remaining=st.integers(-10, 5_000),
    session_seconds=st.integers(0, 5_000),
    max_session=st.integers(1, 5_000),
)
def test_reaper_agrees_with_billing(
    bp_us: int, delta_us: int, idle: int, remaining: int, session_seconds: int, max_session: int
) -> None:
    bp = T0 + timedelta(microseconds=bp_us)
    now = bp + timedelta(microseconds=delta_us)
    allowed = min(max(0, remaining), max(0, max_session - session_seconds))
    b = reap_decision(
        bill_point=bp,
        now=now,
        idle_timeout_seconds=idle,
        remaining_quota=remaining,
        session_seconds=session_seconds,
        max_session_seconds=max_session,
    )
    limit_at = bp + timedelta(seconds=allowed)
    if allowed <= idle and now >= limit_at:
        assert b is not None
        assert b.seconds == allowed
        assert b.ended_at == b.bill_point == limit_at
        assert b.end_reason in ("quota_exceeded", "max_duration")
        # A heartbeat at the same moment decides the same end.
        hb = bill_gap(
            bill_point=bp,
            now=now,
            idle_timeout_seconds=idle,
            remaining_quota=remaining,
            session_seconds=session_seconds,
            max_session_seconds=max_session,
        )
        assert hb == b
    elif delta_us >= idle * US:
        assert b == Bill(seconds=0, bill_point=bp, end_reason="idle_timeout", ended_at=bp)
    else:
        assert b is None


# --------------------------------------------------------------------------- properties


@dataclass
class Model:
    """Independent model in integer microseconds of the billing rules.

    bill point `bp`, billed total `billed`, and whether/when/why the session ended.
    """

    idle: int
    remaining: int
    max_session: int
    bp: int = 0
    billed: int = 0
    ended_at: int | None = None
    reason: str | None = None

    def heartbeat(self, now: int) -> int:
        assert self.ended_at is None
        gap = max(0, now - self.bp)
        capped = gap > self.idle * US
        seconds = self.idle if capped else gap // US
        left_quota = max(0, self.remaining - self.billed)
        left_duration = max(0, self.max_session - self.billed)
        left = min(left_quota, left_duration)
        if seconds >= left:
            self.ended_at = self.bp + left * US
            self.reason = "quota_exceeded" if left_quota <= left_duration else "max_duration"
            self.bp = self.ended_at
            self.billed += left
            return left
        self.bp = now if capped else self.bp + seconds * US
        self.billed += seconds
        return seconds


def run_heartbeats(
    times_us: list[int], idle: int, remaining: int, max_session: int
) -> tuple[list[Bill], datetime]:
    bp = T0
    session_seconds = 0
    bills: list[Bill] = []
    for t in times_us:
        b = bill_gap(
            bill_point=bp,
            now=T0 + timedelta(microseconds=t),
            idle_timeout_seconds=idle,
            remaining_quota=remaining - session_seconds,
            session_seconds=session_seconds,
            max_session_seconds=max_session,
        )
        bills.append(b)
        session_seconds += b.seconds
        bp = b.bill_point
        if b.end_reason is not None:
            break
    return bills, bp


heartbeat_gaps = st.lists(
    st.one_of(
        st.integers(0, 20 * US),  # ordinary heartbeats
        st.integers(55 * US, 65 * US),  # around the idle timeout
        st.integers(0, 400 * US),  # long silences
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300)
@given(
    gaps=heartbeat_gaps,
    idle=st.sampled_from([5, 30, 60, 120]),
    remaining=st.integers(0, 2_000),
    max_session=st.integers(1, 2_000),
)
def test_billing_matches_the_model_and_respects_every_limit(
    gaps: list[int], idle: int, remaining: int, max_session: int
) -> None:
    times: list[int] = []
    t = 0
    for g in gaps:
        t += g
        times.append(t)
    bills, final_bp = run_heartbeats(times, idle, remaining, max_session)
    model = Model(idle=idle, remaining=remaining, max_session=max_session)
    for t_us, b in zip(times, bills, strict=False):
        expected = model.heartbeat(t_us)
        assert b.seconds == expected
        assert b.seconds >= 0
        assert b.bill_point == T0 + timedelta(microseconds=model.bp)
        if model.ended_at is None:
            assert b.end_reason is None and b.ended_at is None
        else:
            assert b.end_reason == model.reason
            assert b.ended_at == T0 + timedelta(microseconds=model.ended_at)
    assert (model.ended_at is not None) == (bills[-1].end_reason is not None)

    total = sum(b.seconds for b in bills)
    last_time = times[len(bills) - 1]
    assert total == model.billed
    assert total <= remaining
    assert total <= max_session
    assert total <= last_time // US  # never more than the elapsed whole seconds
    # The bill point never runs ahead of server time.
    assert final_bp <= T0 + timedelta(microseconds=last_time)
    # Each single bill is bounded by the idle timeout.
    assert all(b.seconds <= idle for b in bills)
    if bills[-1].end_reason is not None:
        # Ending on a limit means that limit was reached exactly.
        assert total == min(remaining, max_session)


@settings(max_examples=300)
@given(
    gaps=st.lists(st.integers(0, 59 * US), min_size=1, max_size=60),
    remaining=st.integers(0, 5_000),
    max_session=st.integers(1, 5_000),
)
def test_without_idle_gaps_the_total_is_floor_of_elapsed_up_to_the_limit(
    gaps: list[int], remaining: int, max_session: int
) -> None:
    # Heartbeat gaps of at most idle - 1 s: with the carried fraction (< 1 s) no gap from
    # the bill point exceeds the idle timeout, so nothing is capped.
    times: list[int] = []
    t = 0
    for g in gaps:
        t += g
        times.append(t)
    bills, _ = run_heartbeats(times, 60, remaining, max_session)
    total = sum(b.seconds for b in bills)
    limit = min(remaining, max_session)
    if bills[-1].end_reason is None:
        assert len(bills) == len(times)
        assert total == times[-1] // US
        assert total < limit
    else:
        assert total == limit
        assert times[len(bills) - 1] // US >= limit


@given(
    start_us=st.integers(0, 10**9),
    gaps=st.lists(st.integers(1, US - 1), min_size=1, max_size=50),
)
def test_sub_second_heartbeats_never_lose_time(start_us: int, gaps: list[int]) -> None:
    assume(sum(gaps) > 0)
    bp = T0 + timedelta(microseconds=start_us)
    now = bp
    total = 0
    for g in gaps:
        now += timedelta(microseconds=g)
        b = bill_gap(
            bill_point=bp,
            now=now,
            idle_timeout_seconds=60,
            remaining_quota=10**6,
            session_seconds=total,
            max_session_seconds=10**6,
        )
        total += b.seconds
        bp = b.bill_point
    elapsed_us = sum(gaps)
    assert total == elapsed_us // US
    assert now - bp < timedelta(seconds=1)
