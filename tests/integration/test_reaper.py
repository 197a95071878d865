"""The reaper on real PostgreSQL: it ends idle and over-limit sessions, and between
passes loads only the sessions that may be due."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from uuid import UUID

import msgspec
import psycopg
import pytest

from adapters.audit.history import History
from adapters.audit.rebuild import rebuild
from adapters.bootstrap import build_application
from adapters.eventstore.schema import migrate
from adapters.projector.runner import PROJECTIONS
from adapters.reaper import ABANDONED_AFTER_SECONDS, RECHECK_SECONDS, Reaper
from application.live import LiveApplication, Reaped
from application.principal import Principal
from application.settings import PlanDefaults, Settings, parse_database_url
from domain.transcript import RawEntry, Transcript
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


def say(app: LiveApplication, sid: str, clock: Clock, *lines: tuple[str, str]) -> None:
    """Lines of a live session, stored as the realtime bridge stores them."""
    raws = [RawEntry(role=r, text=t, timestamp=clock().isoformat()) for r, t in lines]
    app.append_lines(UUID(sid), raws, clock)


def live_transcript(app: LiveApplication, sid: str) -> Transcript:
    transcript = app.load(Transcript, Transcript.live_id(UUID(sid)))
    assert transcript is not None
    return transcript


def project(app: LiveApplication, *names: str) -> None:
    """Bring read models up to the event store, as the projector would."""
    params = parse_database_url(app.settings.database_url)
    with psycopg.connect(params.as_owner().conninfo(), autocommit=True) as conn:
        for name in names:
            rebuild(conn, History(conn, app.mapper), name, PROJECTIONS[name])


def test_an_idle_session_s_live_transcript_is_finalised_with_its_end(
    app: LiveApplication,
) -> None:
    """Nobody heartbeats an idle session, so no bridge holds it: nobody else will."""
    clock, p = Clock(), user()
    sid = start(app, p, clock)
    say(app, sid, clock, ("user", "hello"))
    clock.advance(IDLE)
    assert Reaper(app, clock).pass_once() == {sid: "idle_timeout"}
    transcript = live_transcript(app, sid)
    assert transcript.is_final and transcript.end_reason == "idle_timeout"


def test_a_transcript_the_quota_cut_off_is_left_to_its_bridge_then_swept(
    app: LiveApplication,
) -> None:
    """A session that ran out of quota while its bridge held it: the bridge finalises its
    transcript with the turn the end cut off, so the reaper must not finalise it first; if
    the bridge is gone too, the reaper's sweep finalises it once the grace has passed."""
    clock, users = Clock(), (user(), user())
    for p in users:
        app.assign_plan(p.tenant_id, p.user_id, "custom", 3, None, clock)
    bridged, abandoned = (start(app, p, clock) for p in users)
    for sid in (bridged, abandoned):
        say(app, sid, clock, ("user", "tell me a long story"))
    clock.advance(1)
    for p, sid in zip(users, (bridged, abandoned), strict=True):
        app.heartbeat(p, sid, clock)
    clock.advance(2)
    reaper = Reaper(app, clock)
    assert reaper.pass_once() == {bridged: "quota_exceeded", abandoned: "quota_exceeded"}
    for sid in (bridged, abandoned):
        assert not live_transcript(app, sid).is_final
    # One bridge is alive: it finalises with the cut-off turn.
    cut = RawEntry(role="ai", text="Once upon a", timestamp=clock().isoformat())
    app.finalise_transcript(UUID(bridged), "quota_exceeded", clock, cut)
    project(app, "sessions", "transcripts")
    clock.advance(ABANDONED_AFTER_SECONDS - 1)
    assert reaper.finalise_abandoned() == []  # the other bridge may still come
    assert not live_transcript(app, abandoned).is_final
    clock.advance(2)
    assert reaper.finalise_abandoned() == [UUID(abandoned)]
    left = live_transcript(app, abandoned)
    assert left.is_final and left.end_reason == "quota_exceeded"
    assert [e["text"] for e in left.entries] == ["tell me a long story"]
    kept = live_transcript(app, bridged)
    assert kept.end_reason == "quota_exceeded" and kept.entries[-1]["interrupted"] is True
    # Finalised once: the read model still says recording until projected, and a sweep
    # meanwhile changes nothing.
    assert reaper.finalise_abandoned() == []
    assert live_transcript(app, abandoned).version == left.version


def test_a_transcript_that_cannot_be_finalised_does_not_hold_up_the_others(
    app: LiveApplication,
) -> None:
    clock, users = Clock(), (user(), user())
    sids = []
    for p in users:
        app.assign_plan(p.tenant_id, p.user_id, "custom", 1, None, clock)
        sids.append(start(app, p, clock))
        say(app, sids[-1], clock, ("user", "hello"))
    clock.advance(2)
    reaper = Reaper(app, clock)
    assert set(reaper.pass_once().values()) == {"quota_exceeded"}
    project(app, "sessions", "transcripts")
    clock.advance(ABANDONED_AFTER_SECONDS + 1)
    finalise = app.finalise_abandoned_transcript
    broken = UUID(sids[0])

    def failing(session_id: UUID, now: Callable[[], datetime]) -> bool:
        if session_id == broken:
            raise RuntimeError("a database blip")
        return finalise(session_id, now)

    app.finalise_abandoned_transcript = failing  # type: ignore[method-assign]
    assert reaper.finalise_abandoned() == [UUID(sids[1])]
    app.finalise_abandoned_transcript = finalise  # type: ignore[method-assign]
    assert reaper.finalise_abandoned() == [broken]  # the next sweep takes it
