"""The write side on real PostgreSQL: billing, quota, idempotency, concurrency."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any
from uuid import UUID

import msgspec
import psycopg
import pytest

from adapters.bootstrap import build_application
from adapters.eventstore.schema import migrate
from application.idempotency import IdempotencyMismatch, IdempotencyRequest
from application.live import LiveApplication
from application.principal import Principal
from application.settings import PlanDefaults, Settings
from domain.errors import NotFound, QuotaExceeded, SessionAlreadyActive, SessionNotActive
from domain.ids import ledger_id
from domain.periods import period_bounds
from tests.support.clock import Clock


@pytest.fixture(scope="module")
def settings(database_url: str) -> Settings:
    s = Settings(
        database_url=database_url,
        plans=PlanDefaults(free_seconds=100, max_session_seconds=3600),
        db_pool_size=20,
        db_max_overflow=40,
    )
    migrate(s)
    return s


@pytest.fixture
def app(settings: Settings) -> Iterator[LiveApplication]:
    a = build_application(settings)
    yield a
    a.close()


def user() -> Principal:
    return Principal(
        tenant_id=f"t-{secrets.token_hex(4)}",
        user_id=f"u-{secrets.token_hex(4)}",
        scopes=frozenset({"live:read", "live:write"}),
        credential="bearer",
    )


def body(answer) -> dict:  # type: ignore[no-untyped-def]
    return msgspec.json.decode(answer.body)


def test_lifecycle_bills_whole_server_seconds(app: LiveApplication) -> None:
    p, clock = user(), Clock()
    started = body(app.start_session(p, "voice", clock))
    sid = started["session_id"]
    assert started["remaining_seconds"] == 100
    clock.advance(10.6)
    hb = body(app.heartbeat(p, sid, clock))
    assert (hb["billed_seconds"], hb["session_seconds"], hb["remaining_seconds"]) == (10, 10, 90)
    clock.advance(5.5)  # the 0.6 s carried over makes this 6 whole seconds
    hb = body(app.heartbeat(p, sid, clock))
    assert (hb["billed_seconds"], hb["session_seconds"]) == (6, 16)
    ended = body(app.end_session(p, sid, "client", clock))
    assert ended["end_reason"] == "client" and ended["session_seconds"] == 16
    assert ended["remaining_seconds"] == 84
    # A second end answers the same body.
    assert body(app.end_session(p, sid, "client", clock)) == ended
    with pytest.raises(SessionNotActive):
        app.heartbeat(p, sid, clock)


def test_quota_runs_out_exactly_at_the_limit(app: LiveApplication) -> None:
    p, clock = user(), Clock()
    sid = body(app.start_session(p, "avatar", clock))["session_id"]
    clock.advance(59.5)
    assert body(app.heartbeat(p, sid, clock))["session_seconds"] == 59
    clock.advance(55)
    with pytest.raises(QuotaExceeded):
        app.heartbeat(p, sid, clock)  # 41 left: billed exactly 41, then ended
    view = app.session_view(p, sid)
    assert view["end_reason"] == "quota_exceeded" and view["session_seconds"] == 100
    with pytest.raises(QuotaExceeded):
        app.heartbeat(p, sid, clock)  # and the next heartbeat learns why
    with pytest.raises(QuotaExceeded):
        app.start_session(p, "voice", clock)


def test_a_heartbeat_after_the_idle_timeout_finds_the_session_ended(
    app: LiveApplication,
) -> None:
    p, clock = user(), Clock()
    sid = body(app.start_session(p, "voice", clock))["session_id"]
    clock.advance(20.4)
    app.heartbeat(p, sid, clock)
    clock.advance(60)
    with pytest.raises(SessionNotActive) as err:
        app.heartbeat(p, sid, clock)
    assert err.value.end_reason == "idle_timeout"
    view = app.session_view(p, sid)
    assert view["session_seconds"] == 20 and view["ended_at"] == clock.at - timedelta(
        seconds=60.4
    )


def test_another_users_session_is_not_found(app: LiveApplication) -> None:
    owner, other, clock = user(), user(), Clock()
    sid = body(app.start_session(owner, "voice", clock))["session_id"]
    with pytest.raises(NotFound):
        app.heartbeat(other, sid, clock)
    with pytest.raises(NotFound):
        app.end_session(other, sid, "client", clock)
    with pytest.raises(NotFound):
        app.heartbeat(owner, "not-a-uuid", clock)


def test_one_active_session_per_user(app: LiveApplication) -> None:
    p, clock = user(), Clock()
    sid = body(app.start_session(p, "voice", clock))["session_id"]
    with pytest.raises(SessionAlreadyActive) as err:
        app.start_session(p, "voice", clock)
    assert err.value.session_id == sid


def test_idempotent_retry_returns_the_first_answer(
    app: LiveApplication, settings: Settings
) -> None:
    p, clock = user(), Clock()
    idem = IdempotencyRequest(owner=f"{p.tenant_id}/{p.user_id}", key="k1", fingerprint="f1")
    first = app.start_session(p, "voice", clock, idem)
    again = app.start_session(p, "voice", clock, idem)
    assert again == first and first.position is not None
    with pytest.raises(IdempotencyMismatch):
        app.start_session(p, "voice", clock, IdempotencyRequest(idem.owner, "k1", "other"))
    conninfo = settings.database_url
    with psycopg.connect(conninfo) as conn:
        n = conn.execute(
            "SELECT count(*) FROM xentree_live_events WHERE topic LIKE %s",
            ("%LiveSession.Started",),
        ).fetchone()
        assert n is not None
    sid = body(first)["session_id"]
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            "SELECT count(*) FROM active_sessions WHERE session_id = %s", (sid,)
        ).fetchone()
    assert row == (1,)


def test_parallel_heartbeats_never_double_bill(app: LiveApplication) -> None:
    p, clock = user(), Clock()
    sid = body(app.start_session(p, "voice", clock))["session_id"]
    clock.advance(30)
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = [body(a) for a in pool.map(lambda _: app.heartbeat(p, sid, clock), range(50))]
    assert sum(a["billed_seconds"] for a in answers) == 30
    assert app.session_view(p, sid)["session_seconds"] == 30


def test_parallel_starts_never_exceed_the_concurrency_limit(app: LiveApplication) -> None:
    p, clock = user(), Clock()

    def attempt(_: int) -> str:
        try:
            return body(app.start_session(p, "voice", clock))["session_id"]
        except SessionAlreadyActive:
            return ""

    with ThreadPoolExecutor(max_workers=10) as pool:
        started = [s for s in pool.map(attempt, range(20)) if s]
    assert len(started) == 1


def test_a_reader_tailing_the_log_never_skips_an_event(
    app: LiveApplication, settings: Settings
) -> None:
    """Positions are issued in commit order: a reader that follows the log from the last
    position it saw, while eight writers append, misses nothing (no event commits later
    under a lower position than one already read)."""
    import threading

    seen: list[int] = []
    stop = threading.Event()
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        start = conn.execute(
            "SELECT coalesce(max(notification_id), 0) FROM xentree_live_events"
        ).fetchone()[0]  # type: ignore[index]

        def tail() -> None:
            last = start
            with psycopg.connect(settings.database_url, autocommit=True) as reader:
                while not stop.is_set() or last < final[0]:
                    rows = reader.execute(
                        "SELECT notification_id FROM xentree_live_events "
                        "WHERE notification_id > %s ORDER BY notification_id", (last,)
                    ).fetchall()
                    for (position,) in rows:
                        seen.append(position)
                        last = position

        def write() -> None:
            p, clock = user(), Clock()
            for _ in range(6):
                sid = body(app.start_session(p, "voice", clock))["session_id"]
                clock.advance(2.5)
                app.heartbeat(p, sid, clock)
                app.end_session(p, sid, "client", clock)

        final = [10**18]
        reader = threading.Thread(target=tail)
        reader.start()
        with ThreadPoolExecutor(8) as pool:
            for f in [pool.submit(write) for _ in range(8)]:
                f.result()
        final[0] = conn.execute(
            "SELECT max(notification_id) FROM xentree_live_events"
        ).fetchone()[0]  # type: ignore[index]
        stop.set()
        reader.join(timeout=30)
        stored = [
            p for (p,) in conn.execute(
                "SELECT notification_id FROM xentree_live_events WHERE notification_id > %s "
                "ORDER BY notification_id", (start,)
            ).fetchall()
        ]
    assert len(stored) >= 8 * 6 * 4
    assert seen == stored


def test_a_session_end_is_heard_once_it_commits(
    app: LiveApplication, settings: Settings
) -> None:
    """The realtime bridge's feed of ended sessions: a notification per committed end."""
    import threading

    from adapters.eventstore.session_ends import follow_session_ends
    from application.settings import parse_database_url

    heard: list[Any] = []
    listening = threading.Event()
    stop = threading.Event()
    follower = threading.Thread(
        target=follow_session_ends,
        args=(parse_database_url(settings.database_url).conninfo(), heard.append,
              listening.set, stop),
        daemon=True,
    )
    follower.start()
    try:
        assert listening.wait(10)
        p, clock = user(), Clock()
        sid = body(app.start_session(p, "voice", clock))["session_id"]
        clock.advance(3)
        app.heartbeat(p, sid, clock)
        app.end_session(p, sid, "client", clock)
        deadline = time.monotonic() + 10
        while not heard and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [str(s) for s in heard] == [sid]  # the start and the heartbeat said nothing
    finally:
        stop.set()
        follower.join(timeout=5)


def test_snapshots_taken_from_memory_load_the_same_state(
    settings: Settings, app: LiveApplication
) -> None:
    """Session and ledger are snapshotted every 50 events from the aggregates in memory; a
    fresh application (no cache) loads them through those snapshots to the same state."""
    p, clock = user(), Clock()
    sid = body(app.start_session(p, "voice", clock))["session_id"]
    for _ in range(60):
        clock.advance(1)
        app.heartbeat(p, sid, clock)
    fresh = build_application(settings)
    try:
        assert fresh.session_view(p, sid) == app.session_view(p, sid)
        session = fresh.repository.get(UUID(sid))
        ledger = fresh.ledger_for(p.tenant_id, p.user_id, clock())
        assert session.version == 61 and ledger.version > 50
        assert ledger.used_seconds == 60
        snapshots = fresh.snapshots
        assert snapshots is not None
        for aggregate in (session, ledger):
            (stored,) = snapshots.get(aggregate.id, desc=True, limit=1)
            assert stored.originator_version == 50
            assert type(aggregate).Snapshot.take(app.repository.get(
                aggregate.id, version=50)).state == stored.state
    finally:
        fresh.close()


@pytest.fixture
def two_workers(settings: Settings) -> Iterator[tuple[LiveApplication, LiveApplication]]:
    """Two API workers on one store, each with its own aggregate cache, two sessions a
    user at a time."""
    both = msgspec.structs.replace(settings, max_concurrent_sessions=2)
    a, b = build_application(both), build_application(both)
    yield a, b
    a.close()
    b.close()


def test_a_worker_decides_on_what_another_worker_saved_since_it_cached(
    two_workers: tuple[LiveApplication, LiveApplication],
) -> None:
    """A worker first decides from its own cache, unchecked; whatever the other worker
    saved meanwhile must still decide each answer and each second billed."""
    a, b = two_workers
    p, clock = user(), Clock()
    s1 = body(a.start_session(p, "voice", clock))["session_id"]
    s2 = body(a.start_session(p, "voice", clock))["session_id"]
    clock.advance(10.2)
    assert body(b.end_session(p, s1, "client", clock))["session_seconds"] == 10
    # A's cached ledger still counts two active sessions: its start is not refused for it.
    clock.advance(5)
    s3 = body(a.start_session(p, "voice", clock))["session_id"]
    # A still has s1 active in its cache: its heartbeat hears that s1 ended, bills nothing.
    with pytest.raises(SessionNotActive):
        a.heartbeat(p, s1, clock)
    # B's cached ledger knows one (s2): its start is refused, as the store says two.
    with pytest.raises(SessionAlreadyActive):
        b.start_session(p, "voice", clock)
    # Billing through either worker, each behind the other's last write.
    clock.advance(20)
    assert body(b.heartbeat(p, s2, clock))["billed_seconds"] == 35
    assert body(a.heartbeat(p, s3, clock))["billed_seconds"] == 20
    clock.advance(4)
    answer = body(b.heartbeat(p, s3, clock))
    assert answer["billed_seconds"] == 4 and answer["remaining_seconds"] == 100 - 10 - 35 - 24
    view = a.session_view(p, s1)
    assert view["session_seconds"] == 10 and view["end_reason"] == "client"


def test_an_answer_that_saves_nothing_on_the_ledger_reads_the_stored_ledger(
    two_workers: tuple[LiveApplication, LiveApplication],
) -> None:
    """A heartbeat with no whole second to bill saves nothing on the ledger, so no save
    checks the ledger A took from its cache: its remaining seconds come from the store."""
    a, b = two_workers
    p, clock = user(), Clock()
    s1 = body(b.start_session(p, "voice", clock))["session_id"]
    clock.advance(20)
    s2 = body(a.start_session(p, "voice", clock))["session_id"]  # A caches the ledger
    b.end_session(p, s1, "client", clock)  # 20 s billed behind A's back
    clock.advance(0.5)
    answer = body(a.heartbeat(p, s2, clock))
    assert answer["billed_seconds"] == 0 and answer["remaining_seconds"] == 80


def test_a_worker_alone_reads_nothing_back_for_its_own_writes(
    app: LiveApplication, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start, heartbeat and end on one worker's cache: the saves check what it took, so
    no command asks the store for newer events first."""
    p, clock = user(), Clock()
    sid = body(app.start_session(p, "voice", clock))["session_id"]  # opens the ledger
    reads: list[str] = []
    recorder: Any = app.recorder

    def counted(name: str) -> None:
        method = getattr(recorder, name)

        def read(*args: Any, **kwargs: Any) -> Any:
            reads.append(name)
            return method(*args, **kwargs)

        monkeypatch.setattr(recorder, name, read)

    counted("select_events")
    counted("select_events_after")
    clock.advance(5)
    app.heartbeat(p, sid, clock)
    app.end_session(p, sid, "client", clock)
    again = body(app.start_session(p, "voice", clock))["session_id"]
    assert reads == []
    # A heartbeat with no whole second to bill saves nothing on the ledger: the ledger is
    # checked after the decision, in one query, and the decision stands.
    clock.advance(0.4)
    assert body(app.heartbeat(p, again, clock))["billed_seconds"] == 0
    assert reads == ["select_events_after"]


def _cached(app: LiveApplication, aggregate_id: UUID) -> bool:
    cache = app.repository.cache
    assert cache is not None
    try:
        cache.get(aggregate_id)
    except KeyError:
        return False
    return True


def test_an_ended_session_leaves_the_cache_and_its_ledger_stays(
    app: LiveApplication,
) -> None:
    """No command changes an ended session: the cache keeps live sessions and ledgers,
    which a burst of short sessions would otherwise push out. The ended one still answers
    from the store."""
    p, clock = user(), Clock()
    sid = body(app.start_session(p, "voice", clock))["session_id"]
    assert _cached(app, UUID(sid))
    clock.advance(3.2)
    ended = body(app.end_session(p, sid, "client", clock))
    assert not _cached(app, UUID(sid))
    ledger = ledger_id(p.tenant_id, p.user_id, period_bounds(clock())[0])
    assert _cached(app, ledger)  # before anything reads it again
    assert app.ledger_for(p.tenant_id, p.user_id, clock()).used_seconds == 3
    assert body(app.end_session(p, sid, "client", clock)) == ended
    with pytest.raises(SessionNotActive):
        app.heartbeat(p, sid, clock)
    assert app.session_view(p, sid)["session_seconds"] == 3


def test_a_session_ended_by_the_server_leaves_the_cache(app: LiveApplication) -> None:
    p, clock = user(), Clock()
    sid = body(app.start_session(p, "voice", clock))["session_id"]
    clock.advance(2.5)
    assert app.end_for(UUID(sid), "token_revoked", clock)
    assert not _cached(app, UUID(sid))
    with pytest.raises(SessionNotActive):
        app.heartbeat(p, sid, clock)
