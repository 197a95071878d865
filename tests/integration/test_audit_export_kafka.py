"""`audit export` writes, line for line, the very messages the relay put on the topic: an
auditor without Kafka and an analyst with it read the same envelopes."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
from kafka import KafkaConsumer, TopicPartition

from adapters.bootstrap import build_application
from adapters.eventstore.schema import migrate
from adapters.relay.relay import Relay
from application.settings import Settings
from tests.support.audit import as_app_role, cli, one_session, principal
from tests.support.clock import Clock
from tests.support.services import scratch_database


def topic_values(bootstrap: str, topic: str, expected: int) -> dict[str, bytes]:
    """Every message value on the topic, by CloudEvent id (read by assignment)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        values: dict[str, bytes] = {}
        deadline = time.monotonic() + 30
        while len(values) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    values[msgspec.json.decode(record.value)["id"]] = record.value
        return values
    finally:
        consumer.close()


def test_export_lines_are_the_messages_on_the_topic(
    database_url: str, kafka_bootstrap: str, fresh_topic: str, tmp_path: Path
) -> None:
    with scratch_database(database_url) as url:
        settings = Settings(
            database_url=as_app_role(url), kafka_bootstrap=kafka_bootstrap,
            kafka_topic=fresh_topic, state_dir=str(tmp_path),
        )
        migrate(settings)
        app = build_application(settings)
        p = principal()
        try:
            for seconds in (4, 9):
                one_session(app, p, Clock(), seconds)
            app.set_nickname(p, "auditor's friend", None)
            one_session(app, principal(), Clock(), 2)
            relay = Relay(settings, app)
            try:
                while relay.run_once():
                    pass
            finally:
                relay.close()
        finally:
            app.close()

        done = cli(url, tmp_path, "audit", "export")
        assert done.returncode == 0, done.stderr
        exported = {msgspec.json.decode(x)["id"]: x.encode() for x in done.stdout.splitlines()}
        published = topic_values(kafka_bootstrap, fresh_topic, len(exported))
        assert published == exported  # byte for byte, the same envelopes
        mine = cli(url, tmp_path, "audit", "export", "--tenant", p.tenant_id,
                   "--user", p.user_id)
        lines = mine.stdout.splitlines()
        types = {msgspec.json.decode(x)["type"] for x in lines}
        assert "xentree.live.Account.NicknameChanged" in types
        assert {x.encode() for x in lines} < set(published.values())
