"""The in-process anchors, each one thread on the same PostgreSQL and broker as the stack:
the eventsourcing library's own create-and-save and get-and-save loops (one trivial
aggregate per iteration, the library's default PostgreSQL recorder, fsync on), a plain
autocommit INSERT loop, and a kafka-python produce loop."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from psycopg import sql

from application.settings import DatabaseParams
from ops.benchmark.httpload import LoadResult

ANCHOR_DATABASE = "xentree_bench_anchor"


class Counter(Aggregate):
    @event("Created")
    def __init__(self) -> None:
        self.count = 0

    @event("Incremented")
    def increment(self) -> None:
        self.count += 1


class AnchorApp(Application[UUID]):
    name = "bench_anchor"


def anchor_database(db: DatabaseParams) -> DatabaseParams:
    """A fresh database beside the stack's, on the same server."""
    with psycopg.connect(db.conninfo(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(ANCHOR_DATABASE)
            )
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(ANCHOR_DATABASE)))
    return DatabaseParams(db.host, db.port, ANCHOR_DATABASE, db.user, db.password)


def es_app(db: DatabaseParams, pool_size: int = 5, max_overflow: int = 10) -> AnchorApp:
    """The anchors' application on `db` (the library's pool defaults unless given)."""
    return AnchorApp(
        env={
            "POSTGRES_POOL_SIZE": str(pool_size),
            "POSTGRES_MAX_OVERFLOW": str(max_overflow),
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": db.dbname,
            "POSTGRES_HOST": db.host,
            "POSTGRES_PORT": str(db.port),
            "POSTGRES_USER": db.user,
            "POSTGRES_PASSWORD": db.password,
            "CREATE_TABLE": "y",
        }
    )


def _timed_loop(seconds: float, step: Any) -> LoadResult:
    result = LoadResult(seconds=seconds)
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    i = 0
    while time.monotonic() < deadline:
        t = time.monotonic()
        step(i)
        result.latencies.append(time.monotonic() - t)
        i += 1
    result.seconds = time.monotonic() - started
    return result


def es_create_and_save(db: DatabaseParams, seconds: float) -> LoadResult:
    app = es_app(db)
    try:
        _timed_loop(min(1.0, seconds / 4), lambda _i: app.save(Counter()))  # warm
        return _timed_loop(seconds, lambda _i: app.save(Counter()))
    finally:
        app.close()


def es_get_and_save(db: DatabaseParams, seconds: float, aggregates: int = 200) -> LoadResult:
    app = es_app(db)
    try:
        ids = []
        for _ in range(aggregates):
            counter = Counter()
            app.save(counter)
            ids.append(counter.id)

        def step(i: int) -> None:
            counter: Counter = app.repository.get(ids[i % len(ids)])
            counter.increment()
            app.save(counter)

        return _timed_loop(seconds, step)
    finally:
        app.close()


def insert_loop(db: DatabaseParams, seconds: float) -> LoadResult:
    with psycopg.connect(db.conninfo(), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_insert (id bigserial PRIMARY KEY, body text)"
        )
        return _timed_loop(
            seconds,
            lambda i: conn.execute("INSERT INTO bench_insert (body) VALUES (%s)", (f"row {i}",)),
        )


def fsync_setting(db: DatabaseParams) -> str:
    with psycopg.connect(db.conninfo(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('fsync') || ', synchronous_commit '"
            " || current_setting('synchronous_commit')"
        ).fetchone()
    return str(row[0]) if row else "?"


def kafka_produce_loop(bootstrap: str, seconds: float, size: int = 200) -> LoadResult:
    """Fire-and-collect small messages (acks=1, kafka-python's defaults otherwise); the
    time includes the final flush, so every counted message was acknowledged."""
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    topic = "xentree.bench.anchor"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="xentree-bench")
    try:
        admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, client_id="xentree-bench")
    payload = b"x" * size
    try:
        for i in range(2000):  # warm: metadata, connections
            producer.send(topic, key=str(i % 64).encode(), value=payload)
        producer.flush()
        result = LoadResult(seconds=seconds)
        started = time.monotonic()
        deadline = started + seconds
        sent = 0
        while time.monotonic() < deadline:
            for _ in range(100):
                producer.send(topic, key=str(sent % 64).encode(), value=payload)
                sent += 1
        producer.flush()
        result.seconds = time.monotonic() - started
        # No per-message latency: record one entry per message so the rate is right.
        result.latencies = [result.seconds / max(sent, 1)] * sent
        return result
    finally:
        producer.close()
