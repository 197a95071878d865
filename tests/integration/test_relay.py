"""The relay on real PostgreSQL and Tansu: order, resumption, fail-over, recreated topics."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import msgspec
import psycopg
import pytest
from kafka.admin import KafkaAdminClient

from adapters.bootstrap import build_application
from adapters.eventstore.schema import migrate
from adapters.relay.envelope import Envelope
from adapters.relay.relay import Relay, relay_position, relay_progress
from application.live import LiveApplication
from application.principal import Principal
from application.settings import PROJECT_ROOT, Settings
from ops.stack import EmbeddedKafka
from tests.support.clock import Clock
from tests.support.waiting import TopicReader, running, wait_until

Records = list[tuple[int, int, Envelope]]


@pytest.fixture
def settings(database_url: str, kafka_bootstrap: str, fresh_topic: str) -> Settings:
    s = Settings(
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic=fresh_topic,
        kafka_partitions=4,  # what `fresh_topic` has, also when a restart recreates it
        relay_poll_seconds=0.2,
    )
    migrate(s)
    return s


@pytest.fixture
def app(settings: Settings) -> Iterator[LiveApplication]:
    a = build_application(settings)
    yield a
    a.close()


@pytest.fixture
def reader(settings: Settings) -> Iterator[TopicReader]:
    r = TopicReader(settings.kafka_bootstrap, settings.kafka_topic)
    yield r
    r.close()


def user() -> Principal:
    return Principal(
        tenant_id=f"t-{secrets.token_hex(4)}",
        user_id=f"u-{secrets.token_hex(4)}",
        scopes=frozenset({"live:read", "live:write"}),
        credential="bearer",
    )


def some_sessions(app: LiveApplication, n: int = 3) -> int:
    """Start, bill and end `n` sessions of different users; the last event's position."""
    last = 0
    for _ in range(n):
        p, clock = user(), Clock()
        started = app.start_session(p, "voice", clock)
        sid = msgspec.json.decode(started.body)["session_id"]
        clock.advance(7)
        app.heartbeat(p, sid, clock)
        ended = app.end_session(p, sid, "client", clock)
        assert ended.position is not None
        last = ended.position
    return last


def head(settings: Settings) -> int:
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT max(notification_id) FROM xentree_live_events").fetchone()
    return int(row[0]) if row and row[0] else 0


def published(settings: Settings) -> int:
    with psycopg.connect(settings.database_url) as conn:
        return relay_position(conn, settings.kafka_topic)


def covers(settings: Settings, upto: int) -> Callable[[Records], bool]:
    """Every stored event up to position `upto` is on the topic. (Positions have gaps:
    a rolled-back write still used up its sequence numbers.)"""
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT notification_id FROM xentree_live_events WHERE notification_id <= %s",
            (upto,),
        ).fetchall()
    wanted = {int(r[0]) for r in rows}
    return lambda records: {e.position for _, _, e in records} >= wanted


def read_topic(settings: Settings, upto: int, timeout: float) -> tuple[Records, dict[int, int]]:
    """Everything on the topic once it holds every event up to `upto`, read by a new
    reader (one made before the topic was recreated could hold the old one's metadata),
    and how far each partition's messages link up."""
    reader = TopicReader(settings.kafka_bootstrap, settings.kafka_topic)
    try:
        return reader.read_until(covers(settings, upto), timeout=timeout), reader.chains()
    finally:
        reader.close()


def test_publishes_in_order_keyed_by_aggregate(
    settings: Settings, app: LiveApplication, reader: TopicReader
) -> None:
    last = some_sessions(app, 4)
    relay = Relay(settings, app)
    try:
        while relay.run_once():
            pass
    finally:
        relay.close()
    assert published(settings) == head(settings) >= last
    records = reader.read_until(covers(settings, last))
    by_partition: dict[int, list[int]] = defaultdict(list)
    by_aggregate: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for partition, _offset, e in records:
        by_partition[partition].append(e.position)
        by_aggregate[e.subject].append((partition, e.aggregateversion))
        assert e.id == f"{e.subject}:{e.aggregateversion}"
        assert e.tenantid and e.userid  # resolved from the first event for later ones
    for partition, positions in by_partition.items():
        assert positions == sorted(positions) and len(set(positions)) == len(positions)
        # Each message names the one before it on its partition (0: none), so a reader
        # can tell it has read everything up to a position without a hole.
        named = [reader.previous[p, o] for p, o, _ in records if p == partition]
        assert named == [0, *positions[:-1]]
    assert reader.chains() == {p: max(ps) for p, ps in by_partition.items()}
    for stream in by_aggregate.values():
        assert len({p for p, _ in stream}) == 1  # one partition per aggregate
        assert [v for _, v in stream] == list(range(1, len(stream) + 1))
    assert len(by_partition) > 1
    # With its position the relay records the last one it published to each partition:
    # what lets a projector know a quiet partition holds nothing more, without the broker.
    with psycopg.connect(settings.database_url) as conn:
        progress = relay_progress(conn, settings.kafka_topic)
    assert progress.position == published(settings)
    assert progress.partitions == {p: max(ps) for p, ps in by_partition.items()}


def test_resumes_after_a_crash_without_losing_events(
    settings: Settings, app: LiveApplication, reader: TopicReader
) -> None:
    some_sessions(app, 10)
    total = head(settings)
    env = {
        **os.environ,
        "XENTREE_DATABASE_URL": settings.database_url,
        "XENTREE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "XENTREE_KAFKA_TOPIC": settings.kafka_topic,
        "XENTREE_RELAY_BATCH_SIZE": "2",
    }
    script = (
        "import threading; from application.settings import load_settings;"
        "from adapters.relay.relay import run_relay; run_relay(load_settings(), threading.Event())"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=PROJECT_ROOT)
    try:
        wait_until(lambda: published(settings) > 0, 20, "the relay to publish something")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert published(settings) < total, "the relay finished before it could be killed"
    relay = Relay(settings, app)
    with running(relay.run_forever):
        wait_until(lambda: published(settings) == total, 20, "the relay to catch up")
    reader.read_until(covers(settings, total))
    # The tail published again after the crash links up like the first time: read in
    # order, every partition's links reach its last event.
    assert reader.chains() == last_positions(reader)


def test_a_standby_takes_over_when_the_active_relay_stops(
    settings: Settings, app: LiveApplication, reader: TopicReader
) -> None:
    relays = [Relay(settings, app), Relay(settings, app)]
    with running(relays[0].run_forever) as stop_0, running(relays[1].run_forever) as stop_1:
        wait_until(lambda: any(r.active for r in relays), 10, "a relay to become active")
        active = 0 if relays[0].active else 1
        standby = relays[1 - active]
        last = some_sessions(app, 2)
        wait_until(lambda: published(settings) >= last, 10, "the active relay to publish")
        assert not standby.active
        (stop_0, stop_1)[active].set()
        wait_until(lambda: standby.active, 10, "the standby to take over")
        last = some_sessions(app, 2)
        wait_until(lambda: published(settings) >= last, 10, "the standby to publish")
    reader.read_until(covers(settings, last))


def test_a_recreated_topic_is_republished_from_the_start(
    settings: Settings, app: LiveApplication, kafka_broker: EmbeddedKafka
) -> None:
    relay = Relay(settings, app)
    with running(relay.run_forever):
        before = some_sessions(app, 2)
        wait_until(lambda: published(settings) >= before, 10, "the relay to publish")
        kafka_broker.restart()
        after = some_sessions(app, 2)
        # The broker forgot everything: all of it must come back, not just the new part.
        records, _ = read_topic(settings, after, timeout=25)
        # What it says it published to each partition is of the new topic only.
        wait_until(lambda: published(settings) >= after, 10, "the relay to record it")
        with psycopg.connect(settings.database_url) as conn:
            progress = relay_progress(conn, settings.kafka_topic)
        last: dict[int, int] = {}
        for partition, _offset, e in records:
            last[partition] = max(last.get(partition, 0), e.position)
        assert progress.partitions is not None
        assert {p: n for p, n in progress.partitions.items() if n <= after} == {
            p: n for p, n in last.items() if n <= after}
        # Republished from the start, the new topic's messages link up from its start
        # (whatever the old producer may have sent there first links to nothing in it):
        # once all of it is read, each partition's links reach its last message.
        reader = TopicReader(settings.kafka_bootstrap, settings.kafka_topic)
        try:
            wait_until(lambda: reader.poll() and reader.chains() == last_positions(reader),
                       15, "every partition to link up")
        finally:
            reader.close()


def last_positions(reader: TopicReader) -> dict[int, int]:
    last: dict[int, int] = {}
    for partition, _offset, e in reader.records:
        last[partition] = max(last.get(partition, 0), e.position)
    return last


def stored_topic_id(settings: Settings) -> str | None:
    with psycopg.connect(settings.database_url) as conn:
        return relay_progress(conn, settings.kafka_topic).topic_id


def test_a_topic_recreated_with_fewer_partitions_is_republished_onto_the_ones_it_has(
    settings: Settings, app: LiveApplication
) -> None:
    # The topic has four partitions. Deleted, the relay creates it again with its own
    # setting of one. Its producer, still connected, must not keep the old topic's
    # partitions: sends to partitions that no longer exist only fail when they expire.
    one = msgspec.structs.replace(settings, kafka_partitions=1)
    relay = Relay(one, app)
    with running(relay.run_forever):
        before = some_sessions(app, 2)
        wait_until(lambda: published(one) >= before, 10, "the relay to publish")
        old_id = stored_topic_id(one)
        admin = KafkaAdminClient(bootstrap_servers=one.kafka_bootstrap)
        try:
            admin.delete_topics([one.kafka_topic])
        finally:
            admin.close()
        wait_until(lambda: stored_topic_id(one) not in (None, old_id), 15,
                   "the relay to create the topic again")
        after = some_sessions(app, 2)
        records, _ = read_topic(one, after, timeout=15)
    assert {partition for partition, _offset, _e in records} == {0}


def test_after_a_round_the_relay_waits_for_the_next_commit(
    settings: Settings, app: LiveApplication
) -> None:
    """Every commit notifies. Those heard while a round ran are for events that round
    published: the relay waits for a commit after it, and keeps none of them."""
    relay = Relay(settings, build_application(settings))
    try:
        assert relay._acquire_lock()  # holds the lock and LISTENs, as when it follows
        while relay.run_once():
            pass  # what the store held already (the database is shared with other tests)
        some_sessions(app, 5)  # 15 commits, each a notification
        time.sleep(0.2)  # for them to reach the relay's connection
        assert relay.run_once() > 0  # its queries hear the notifications meanwhile
        assert relay._wait_for_notify()  # one of those, the rest with it
        assert relay.run_once() == 0
        started = time.monotonic()
        assert not relay._wait_for_notify()  # nothing committed since: the poll interval
        assert time.monotonic() - started >= settings.relay_poll_seconds * 0.9
        some_sessions(app, 1)
        assert relay._wait_for_notify()
    finally:
        relay.close()
        relay.app.close()
