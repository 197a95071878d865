"""Waiting for a condition with a deadline, and reading a whole topic, for relay and
projection tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from kafka import KafkaConsumer, TopicPartition

from adapters.projector.runner import Link, extend_chain, previous_position
from adapters.relay.envelope import Envelope, decode

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T], timeout: float = 20.0, what: str = "condition"
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class TopicReader:
    """Reads a topic from the beginning, by assignment (no group), accumulating records."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self.records: list[tuple[int, int, Envelope]] = []  # (partition, offset, envelope)
        # (partition, offset) -> the position the message names as its predecessor's.
        self.previous: dict[tuple[int, int], int | None] = {}
        self._assigned = False

    def _assign(self) -> bool:
        partitions = self.consumer.partitions_for_topic(self.topic)
        if not partitions:
            return False
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self._assigned = True
        return True

    def poll(self) -> list[tuple[int, int, Envelope]]:
        if not self._assigned and not self._assign():
            return self.records
        for tp, batch in self.consumer.poll(timeout_ms=200).items():
            self.records.extend((tp.partition, r.offset, decode(r.value)) for r in batch)
            self.previous.update(
                ((tp.partition, r.offset), previous_position(r.headers)) for r in batch
            )
        return self.records

    def chains(self) -> dict[int, int]:
        """How far each partition read so far links up from its start (see the projector)."""
        links: dict[int, list[Link]] = {}
        for partition, offset, e in sorted(self.records, key=lambda r: (r[0], r[1])):
            links.setdefault(partition, []).append((self.previous[partition, offset], e.position))
        return {p: extend_chain(0, ls) for p, ls in links.items()}

    def read_until(
        self, done: Callable[[list[tuple[int, int, Envelope]]], bool], timeout: float = 20.0
    ) -> list[tuple[int, int, Envelope]]:
        wait_until(lambda: done(self.poll()), timeout, f"records on {self.topic}")
        return self.records

    def close(self) -> None:
        self.consumer.close()


@contextmanager
def running(target: Callable[[threading.Event], Any]) -> Iterator[threading.Event]:
    """Run `target(stop)` in a thread for the block; stop and join it after."""
    stop = threading.Event()
    thread = threading.Thread(target=target, args=(stop,), daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive(), "worker did not stop"
