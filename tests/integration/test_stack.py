"""The embedded services the dev stack and the tests run on, exercised for real."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from ops.launcher import AppProcesses, Output
from ops.stack import EmbeddedKafka, EmbeddedPostgres, free_port
from tests.support.services import CONSUMER_GROUP_SETTINGS, create_topic, unique_topic_name


def test_postgres_accepts_a_write_and_reads_it_back(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TABLE stack_probe (id int PRIMARY KEY, note text NOT NULL)")
        conn.execute("INSERT INTO stack_probe VALUES (%s, %s)", (1, "héllo"))
        conn.commit()
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT note FROM stack_probe WHERE id = 1").fetchone()
        fsync = conn.execute("SHOW fsync").fetchone()
    assert row == ("héllo",)
    assert fsync == ("on",)


def test_embedded_postgres_keeps_data_across_a_crash(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg", free_port())
    try:
        url = server.start()
        with psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE kept (v int)")
            conn.execute("INSERT INTO kept VALUES (42)")
        server.kill()  # leaves a stale postmaster.pid behind, as a killed launcher would
        assert (tmp_path / "pg" / "postmaster.pid").exists()
        assert server.start() == url
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [(42,)]
    finally:
        server.stop()


def test_kafka_round_trips_keyed_messages_through_a_consumer_group(
    kafka_bootstrap: str, fresh_topic: str
) -> None:
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    sent = [(f"user-{i % 3}".encode(), f"event-{i}".encode()) for i in range(9)]
    partitions: dict[bytes, set[int]] = {}
    for key, value in sent:
        meta = producer.send(fresh_topic, key=key, value=value).get(timeout=10)
        partitions.setdefault(key, set()).add(meta.partition)
    producer.close()

    consumer = KafkaConsumer(
        fresh_topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"{fresh_topic}.group",
        **CONSUMER_GROUP_SETTINGS,
    )
    received: list[Any] = []
    deadline = time.monotonic() + 30
    while len(received) < len(sent) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            received.extend(records)
    consumer.commit()
    consumer.close()

    assert sorted((r.key, r.value) for r in received) == sorted(sent)
    assert all(len(p) == 1 for p in partitions.values())  # one key, one partition
    for key in partitions:  # per-key order is kept
        values = [r.value for r in received if r.key == key]
        assert values == [v for k, v in sent if k == key]


def test_tansu_forgets_topics_when_restarted(kafka_broker: EmbeddedKafka) -> None:
    topic = create_topic(kafka_broker.bootstrap, unique_topic_name("restart"))
    kafka_broker.restart()
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    try:
        [described] = admin.describe_topics([topic])
    finally:
        admin.close()
    assert described["error_code"] == 3  # UNKNOWN_TOPIC_OR_PARTITION: memory storage is gone
    assert described["partitions"] == []


def test_supervisor_restarts_a_crashed_child_and_stops_all(tmp_path: Path) -> None:
    log = tmp_path / "apps.log"
    script = (
        "import sys, time; print('up', flush=True); time.sleep(0.3 if 'crashy' in sys.argv else 60)"
    )
    apps = AppProcesses(
        {},
        [("steady", ["steady"]), ("crashy", ["crashy"])],
        command=[sys.executable, "-c", script],
        output=Output(log.open("a", encoding="utf-8")),
    ).start()
    try:
        steady_pid = apps.pid("steady")
        deadline = time.monotonic() + 10
        while "crashy restarted" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "crashy restarted" in log.read_text()
        assert apps.pid("steady") == steady_pid
    finally:
        apps.stop(grace=2)
    assert apps.pid("steady") is None
    assert apps.pid("crashy") is None


def test_embedded_kafka_can_be_killed_and_started_again(tmp_path: Path) -> None:
    broker = EmbeddedKafka(free_port(), log_path=tmp_path / "tansu.log")
    try:
        bootstrap = broker.start()
        broker.kill()
        assert not broker.running()
        assert broker.start() == bootstrap
        create_topic(bootstrap, unique_topic_name("again"))
    finally:
        broker.stop()
