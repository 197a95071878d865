"""The topic's identity. A broker that loses its storage (Tansu's memory engine, or a
real cluster whose topic was deleted) recreates the topic empty under a new topic id, so
the relay and every consumer compare ids to notice that they must start over."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

UNKNOWN_TOPIC_OR_PARTITION = 3

# kafka-python reports a broker without topic ids (before Kafka 2.8) as the all-zero id.
_NO_TOPIC_ID = "00000000-0000-0000-0000-000000000000"


class TopicMissing(Exception):
    pass


def new_admin(bootstrap: str, client_id: str) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id=client_id, request_timeout_ms=10_000
    )


@dataclass(frozen=True)
class Topic:
    id: str | None  # None when the broker has no topic ids
    partitions: tuple[int, ...]  # the partition indexes, in order


def topic_id(admin: KafkaAdminClient, topic: str) -> str | None:
    """The topic's id; None when the broker has no topic ids. Raises TopicMissing."""
    return describe_topic(admin, topic).id


def describe_topic(admin: KafkaAdminClient, topic: str) -> Topic:
    """The topic's id and partitions, in one round trip. Raises TopicMissing."""
    described: list[dict[str, Any]] = admin.describe_topics([topic])
    for entry in described:
        if entry["name"] != topic:
            continue
        if entry["error_code"] == UNKNOWN_TOPIC_OR_PARTITION or not entry["partitions"]:
            raise TopicMissing(topic)
        if entry["error_code"]:
            raise RuntimeError(f"describing topic {topic}: error {entry['error_code']}")
        tid = entry.get("topic_id")
        return Topic(None if tid is None or str(tid) == _NO_TOPIC_ID else str(tid),
                     tuple(sorted(p["partition_index"] for p in entry["partitions"])))
    raise TopicMissing(topic)


def ensure_topic(admin: KafkaAdminClient, topic: str, partitions: int) -> Topic:
    """Create the topic if it does not exist; its id and partitions."""
    try:
        return describe_topic(admin, topic)
    except TopicMissing:
        pass
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    except TopicAlreadyExistsError:
        pass  # another process won the race
    return describe_topic(admin, topic)
