"""Group commit on real PostgreSQL, as the application role: appends in flight together
commit in one transaction, each answers its own positions or its own conflict, and the
history and its hash chain stay exactly what appends one by one would have made."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast
from uuid import UUID, uuid4

import msgspec
import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent

from adapters.bootstrap import build_application
from adapters.eventstore.append import APPEND_LOCK
from adapters.eventstore.chain import verify
from adapters.eventstore.recorder import LiveRecorder
from adapters.eventstore.schema import migrate, owner_url
from application.idempotency import IdempotencyRecord
from application.live import LiveApplication
from application.settings import Settings
from tests.support.audit import as_app_role, principal
from tests.support.clock import Clock
from tests.support.services import scratch_database


@pytest.fixture(scope="module")
def settings(database_url: str) -> Iterator[Settings]:
    with scratch_database(database_url) as url:
        s = Settings(database_url=as_app_role(url), db_pool_size=20, db_max_overflow=20)
        migrate(s)
        yield s


@pytest.fixture(scope="module")
def app(settings: Settings) -> Iterator[LiveApplication]:
    a = build_application(settings)
    yield a
    a.close()


def _recorder(app: LiveApplication) -> LiveRecorder:
    return cast(LiveRecorder, app.recorder)


def _event(aggregate: UUID, version: int, note: str = "") -> StoredEvent:
    state = msgspec.json.encode({"timestamp": {"_type_": "datetime_iso",
                                               "_data_": "2026-12-06T21:00:00+00:00"},
                                 "note": note})
    return StoredEvent(originator_id=aggregate, originator_version=version,
                       topic="tests.group:Noted", state=state)


def _record(key: str) -> IdempotencyRecord:
    return IdempotencyRecord(owner="t/u", key=key, fingerprint="f", status=200, body=b"{}")


def _stored(settings: Settings, positions: list[int]) -> list[tuple[Any, ...]]:
    with psycopg.connect(owner_url(settings.database_url)) as conn:
        return conn.execute(
            "SELECT notification_id, originator_id, originator_version, state "
            "FROM xentree_live_events WHERE notification_id = ANY(%s) "
            "ORDER BY notification_id", (positions,)).fetchall()


def _chain_intact(settings: Settings) -> bool:
    with psycopg.connect(owner_url(settings.database_url)) as conn:
        verdict, _ = verify(conn)
    return verdict.ok


def test_a_group_answers_each_append_and_commits_all_but_its_conflicts(
    app: LiveApplication, settings: Settings
) -> None:
    recorder = _recorder(app)
    a, b, c = uuid4(), uuid4(), uuid4()
    key = f"k-{uuid4()}"
    group = [
        recorder.append_params([_event(a, 1, "a1"), _event(a, 2, "a2")], _record(key)),
        recorder.append_params([_event(b, 1, "b1")], None),
        recorder.append_params([_event(a, 2, "a2 again")], None),  # a's version 2 is taken
        recorder.append_params([_event(c, 1, "c1")], _record(key)),  # so is the key
        recorder.append_params([_event(c, 1, "c1 after")], None),
    ]
    outcomes = recorder._append_group(group)
    first, second, third, fourth, fifth = outcomes
    assert isinstance(third, IntegrityError) and isinstance(fourth, IntegrityError)
    assert isinstance(first, list) and isinstance(second, list) and isinstance(fifth, list)
    assert first[1] == first[0] + 1 and first[1] < second[0] < fifth[0]
    stored = _stored(settings, [*first, *second, *fifth])
    assert [(row[1], row[2]) for row in stored] == [(a, 1), (a, 2), (b, 1), (c, 1)]
    assert [msgspec.json.decode(row[3])["note"] for row in stored] == ["a1", "a2", "b1",
                                                                      "c1 after"]
    # The key answers the first append's last position, not the one refused for it.
    found = recorder.find("t/u", key)
    assert found is not None and found[1].position == first[1]
    assert _chain_intact(settings)


def test_appends_held_behind_the_lock_commit_as_one_group(
    app: LiveApplication, settings: Settings
) -> None:
    """The first append waits for the append lock (held here); those that come meanwhile
    queue, and commit together once it is done."""
    recorder = _recorder(app)
    groups = recorder._group.groups
    aggregates = [uuid4() for _ in range(6)]
    with psycopg.connect(owner_url(settings.database_url)) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
        with ThreadPoolExecutor(len(aggregates)) as pool:
            first = pool.submit(recorder.insert_events, [_event(aggregates[0], 1)])
            time.sleep(0.2)  # it is in flight, waiting for the lock
            rest = [pool.submit(recorder.insert_events, [_event(a, 1)])
                    for a in aggregates[1:]]
            deadline = time.monotonic() + 5
            while len(recorder._group._queue) < len(rest):
                assert time.monotonic() < deadline
                time.sleep(0.005)
            holder.rollback()  # the lock goes
            answers = [first.result(10)] + [f.result(10) for f in rest]
    assert recorder._group.groups == groups + 1
    positions = [p for answer in answers for p in (answer or [])]
    assert len(positions) == len(set(positions)) == len(aggregates)
    assert [row[1] for row in _stored(settings, positions)] == [
        aggregates[positions.index(p)] for p in sorted(positions)]
    assert _chain_intact(settings)


def test_a_group_that_fails_as_a_whole_runs_each_again_alone(
    app: LiveApplication, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = _recorder(app)
    monkeypatch.setattr(recorder, "grouped_call", "SELECT no_such_function()")
    a, b = uuid4(), uuid4()
    group_failed = threading.Event()
    original = recorder._append_group

    def failing_group(group: Any) -> Any:
        try:
            return original(group)
        finally:
            group_failed.set()

    monkeypatch.setattr(recorder._group, "_run_many", failing_group)
    with psycopg.connect(owner_url(settings.database_url)) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(recorder.insert_events, [_event(uuid4(), 1)])
            time.sleep(0.2)
            rest = [pool.submit(recorder.insert_events, [_event(x, 1)]) for x in (a, b)]
            deadline = time.monotonic() + 5
            while len(recorder._group._queue) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.005)
            holder.rollback()
            answers = [f.result(10) for f in (first, *rest)]
    assert group_failed.is_set()
    positions = [p for answer in answers for p in (answer or [])]
    assert len(set(positions)) == 3
    assert {row[1] for row in _stored(settings, positions)} >= {a, b}
    assert _chain_intact(settings)


def test_concurrent_commands_bill_exactly_and_keep_the_chain(
    app: LiveApplication, settings: Settings
) -> None:
    """Sessions of many users, started, heartbeaten and ended from many threads at once:
    every second billed once, every answer's position its own, the chain intact."""
    users = [principal() for _ in range(12)]

    def run(p: Any) -> tuple[int, int, list[int]]:
        clock = Clock()
        positions: list[int] = []
        billed = 0
        for _ in range(3):
            started = app.start_session(p, "voice", clock)
            assert started.position is not None
            positions.append(started.position)
            sid = msgspec.json.decode(started.body)["session_id"]
            for _ in range(3):
                clock.advance(1.5)
                beat = app.heartbeat(p, sid, clock)
                assert beat.position is not None
                positions.append(beat.position)
            clock.advance(0.7)
            ended = app.end_session(p, sid, "client", clock)
            assert ended.position is not None
            positions.append(ended.position)
            billed += msgspec.json.decode(ended.body)["session_seconds"]
        return billed, app.ledger_for(p.tenant_id, p.user_id, clock()).used_seconds, positions

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(run, users))
    for billed, used, positions in results:
        assert billed == used == 3 * 5  # 5.2 s a session: 5 whole seconds
        assert positions == sorted(positions)
    every = [p for _, _, positions in results for p in positions]
    assert len(every) == len(set(every))
    assert _chain_intact(settings)

