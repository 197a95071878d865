"""The relay picks each message's partition itself (so a message can name the one before
it on its partition): it must be the partition kafka-python's default partitioner picks
for the key, remembered hash or not."""

from __future__ import annotations

from uuid import uuid4

from kafka.partitioner.default import DefaultPartitioner

from adapters.relay.relay import _key_hash


class Cluster:
    """The metadata the partitioner asks: one topic with `count` partitions."""

    def __init__(self, count: int) -> None:
        self.count = count

    def topics(self) -> set[str]:
        return {"t"}

    def partitions_for_topic(self, _topic: str) -> set[int]:
        return set(range(self.count))

    available_partitions_for_topic = partitions_for_topic


def test_the_remembered_hash_picks_the_default_partitioners_partition() -> None:
    keys = [str(uuid4()).encode() for _ in range(500)]
    partitioner = DefaultPartitioner()
    for count in (1, 2, 3, 4, 12):
        for key in keys + keys:  # the second time from the cache
            chosen = partitioner.partition("t", key, key, None, None, Cluster(count))
            assert _key_hash(key) % count == chosen
    assert _key_hash.cache_info().hits >= len(keys)
