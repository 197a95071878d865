"""Billing rules as pure functions (SPEC section 4).

Usage is metered in whole seconds of server time. A bill covers the gap between the
session's bill point and now: whole seconds only, the fraction carried forward by moving
the bill point by exactly the seconds billed, so nothing is billed twice and nothing is
lost. A gap longer than the idle timeout is capped at it (the rest was idle, and is not
billed). A bill never takes usage past the entitlement or the session past its maximum
length: it stops exactly at the limit, and the session ends there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

EndReason = Literal[
    "client",
    "idle_timeout",
    "quota_exceeded",
    "max_duration",
    "token_revoked",
    "client_disconnected",
    "upstream_lost",
]
END_REASONS: tuple[str, ...] = (
    "client",
    "idle_timeout",
    "quota_exceeded",
    "max_duration",
    "token_revoked",
    "client_disconnected",
    "upstream_lost",
)


@dataclass(frozen=True)
class Bill:
    seconds: int
    bill_point: datetime
    # Set when this bill reaches a limit: the session ends at `ended_at` for `end_reason`.
    end_reason: EndReason | None = None
    ended_at: datetime | None = None


def seconds_allowed(
    *, remaining_quota: int, session_seconds: int, max_session_seconds: int
) -> tuple[int, EndReason]:
    """How many more seconds this session may run, and which limit stops it."""
    by_duration = max(0, max_session_seconds - session_seconds)
    by_quota = max(0, remaining_quota)
    if by_quota <= by_duration:
        return by_quota, "quota_exceeded"
    return by_duration, "max_duration"


def session_ends_at(
    *,
    bill_point: datetime,
    remaining_quota: int,
    session_seconds: int,
    max_session_seconds: int,
) -> datetime:
    allowed, _ = seconds_allowed(
        remaining_quota=remaining_quota,
        session_seconds=session_seconds,
        max_session_seconds=max_session_seconds,
    )
    return bill_point + timedelta(seconds=allowed)


def bill_gap(
    *,
    bill_point: datetime,
    now: datetime,
    idle_timeout_seconds: int,
    remaining_quota: int,
    session_seconds: int,
    max_session_seconds: int,
) -> Bill:
    """Bill the server-time gap from `bill_point` to `now`."""
    gap = max(0.0, (now - bill_point).total_seconds())
    if gap > idle_timeout_seconds:
        seconds = idle_timeout_seconds
        # The idle excess is forgiven, not carried: the next gap starts now.
        next_point = now
    else:
        seconds = math.floor(gap)
        next_point = bill_point + timedelta(seconds=seconds)
    allowed, reason = seconds_allowed(
        remaining_quota=remaining_quota,
        session_seconds=session_seconds,
        max_session_seconds=max_session_seconds,
    )
    if seconds >= allowed:
        ended_at = bill_point + timedelta(seconds=allowed)
        return Bill(seconds=allowed, bill_point=ended_at, end_reason=reason, ended_at=ended_at)
    return Bill(seconds=seconds, bill_point=next_point)


def reap_due(
    *,
    bill_point: datetime,
    idle_timeout_seconds: int,
    remaining_quota: int,
    session_seconds: int,
    max_session_seconds: int,
    last_seen: datetime | None = None,
) -> datetime:
    """The first moment `reap_decision` ends the session if nothing else happens to it
    first: the end of its idle window, or its limit when that comes sooner."""
    seen = bill_point if last_seen is None else max(last_seen, bill_point)
    live_until = seen + timedelta(seconds=idle_timeout_seconds)
    allowed, _ = seconds_allowed(
        remaining_quota=remaining_quota,
        session_seconds=session_seconds,
        max_session_seconds=max_session_seconds,
    )
    return min(live_until, bill_point + timedelta(seconds=allowed))


def reap_decision(
    *,
    bill_point: datetime,
    now: datetime,
    idle_timeout_seconds: int,
    remaining_quota: int,
    session_seconds: int,
    max_session_seconds: int,
    last_seen: datetime | None = None,
) -> Bill | None:
    """What the reaper does with an active session at `now`, or None to leave it.

    `last_seen` is the last heartbeat (the bill point when not given); the idle window runs
    from there. A session whose limit falls within the idle window was still live when it
    ran out: it is billed exactly to the limit. Otherwise a session silent for the idle
    timeout ends at its last bill point, with nothing more billed.
    """
    seen = bill_point if last_seen is None else max(last_seen, bill_point)
    live_until = seen + timedelta(seconds=idle_timeout_seconds)
    allowed, reason = seconds_allowed(
        remaining_quota=remaining_quota,
        session_seconds=session_seconds,
        max_session_seconds=max_session_seconds,
    )
    limit_at = bill_point + timedelta(seconds=allowed)
    if limit_at <= live_until and now >= limit_at:
        return Bill(seconds=allowed, bill_point=limit_at, end_reason=reason, ended_at=limit_at)
    if now >= live_until:
        return Bill(
            seconds=0, bill_point=bill_point, end_reason="idle_timeout", ended_at=bill_point
        )
    return None
