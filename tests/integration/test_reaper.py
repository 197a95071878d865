"""The reaper on real PostgreSQL: it ends idle and over-limit sessions, and between
passes loads only the sessions that may be due."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from uuid import UUID

import msgspec
import pytest

from adapters.bootstrap import build_application
from adapters.eventstore.schema import migrate
from adapters.reaper import RECHECK_SECONDS, Reaper
from application.live import LiveApplication, Reaped
from application.principal import Principal
from application.settings import PlanDefaults, Settings
from tests.support.clock import Clock
from tests.support.services import scratch_database

IDLE = 60


@pytest.fixture
def app(database_url: str) -> Iterator[LiveApplication]:
    """A database of its own: a reaper ends every active session it finds."""
    with scratch_database(database_url) as url:
        s = Settings(
            database_url=url,
            plans=PlanDefaults(free_seconds=1000, max_session_seconds=3600),
            idle_timeout_seconds=IDLE,
        )
        migrate(s)
        a = build_application(s)
        yield a
        a.close()


def user() -> Principal:
    return Principal(
        tenant_id=f"t-{secrets.token_hex(4)}",
        user_id=f"u-{secrets.token_hex(4)}",
        scopes=frozenset({"live:read", "live:write"}),
        credential="bearer",
    )


class CountingReaps:
    """Counts the sessions the reaper loads (each `reap` loads one)."""

    def __init__(self, app: LiveApplication) -> None:
        self.loaded: list[UUID] = []
        self._reap = app.reap

        def reap(session_id: UUID, now: Callable[[], datetime]) -> Reaped:
            self.loaded.append(session_id)
            return self._reap(session_id, now)

        app.reap = reap  # type: ignore[method-assign]


def start(app: LiveApplication, p: Principal, clock: Clock) -> str:
    sid: str = msgspec.json.decode(app.start_session(p, "voice", clock).body)["session_id"]
    return sid


def test_the_reaper_loads_a_session_only_when_it_may_be_due(app: LiveApplication) -> None:
    clock = Clock()
    t0 = clock()

    def at(seconds: float) -> None:
        clock.at = t0 + timedelta(seconds=seconds)

    users = [user() for _ in range(5)]
    sessions = [start(app, p, clock) for p in users]
    counter = CountingReaps(app)
    reaper = Reaper(app, clock)

    assert reaper.pass_once() == {}
    assert sorted(map(str, counter.loaded)) == sorted(sessions)  # new: each looked at once
    counter.loaded.clear()
    at(1)
    assert reaper.pass_once() == {}
    assert counter.loaded == []  # none can be due yet

    # A heartbeat at 21 s moves one session's idle window to 81 s; the others go idle at
    # 60 s (their periodic rechecks, at 15-30 s, found them not due yet).
    at(21)
    app.heartbeat(users[0], sessions[0], clock)
    at(IDLE)
    assert reaper.pass_once() == {sid: "idle_timeout" for sid in sessions[1:]}
    # The next recheck comes half an interval later at the soonest: nothing loaded before.
    counter.loaded.clear()
    at(IDLE + RECHECK_SECONDS / 2 - 0.5)
    assert reaper.pass_once() == {} and counter.loaded == []
    # At its due time at the latest it is looked at again, and ended.
    at(81.01)
    assert reaper.pass_once() == {sessions[0]: "idle_timeout"}
    assert [str(s) for s in counter.loaded] == [sessions[0]]
    assert reaper.pass_once() == {}


def test_a_session_ends_at_its_quota_on_the_first_pass_after_it(
    app: LiveApplication,
) -> None:
    clock, p = Clock(), user()
    app.assign_plan(p.tenant_id, p.user_id, "custom", 30, None, clock)
    sid = start(app, p, clock)
    reaper = Reaper(app, clock)
    assert reaper.pass_once() == {}
    clock.advance(10)
    app.heartbeat(p, sid, clock)
    clock.advance(19.5)
    assert reaper.pass_once() == {}
    clock.advance(0.5)
    assert reaper.pass_once() == {sid: "quota_exceeded"}
    summary = app.session_view(p, sid)
    assert summary["session_seconds"] == 30 and summary["end_reason"] == "quota_exceeded"


def test_reap_says_when_a_session_will_be_due(app: LiveApplication) -> None:
    clock, p = Clock(), user()
    sid = start(app, p, clock)
    assert app.reap(UUID(sid), clock) == Reaped(None, clock() + timedelta(seconds=IDLE))
    clock.advance(IDLE)
    assert app.reap(UUID(sid), clock) == Reaped("idle_timeout", None)
    assert app.reap(UUID(sid), clock) == Reaped(None, None)
