"""The relay: follows the notification log in commit order and publishes each event to
Kafka, keyed by its aggregate, recording how far it got in PostgreSQL.

At least once, never skipping: the position is saved only after the broker acknowledged
the whole batch, so a crash republishes the unsaved tail (consumers dedupe by envelope id).
One relay per topic is active at a time, holding a session-level advisory lock on its own
connection; standbys wait for that lock. The same connection LISTENs for the recorder's
NOTIFY and writes the position, so a relay whose connection (and with it the lock) is gone
cannot record progress.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from eventsourcing.persistence import Notification
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import OffsetSpec
from kafka.partitioner.default import murmur2
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from adapters.bootstrap import build_application, recorder_of
from adapters.relay.envelope import Owners, encode, to_envelope
from adapters.relay.topic import Topic, ensure_topic, new_admin
from application.live import LiveApplication
from application.settings import Settings, parse_database_url

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_SECONDS = 30.0
FLUSH_SLICE_SECONDS = 0.5
# How often the topic's identity is asked of the broker (a round trip) while publishing: a
# recreated topic is noticed within this, and everything is then republished.
TOPIC_CHECK_SECONDS = 1.0
RETRY_SECONDS = 1.0
CONTENT_TYPE = ("content-type", b"application/cloudevents+json")
# Each message names the position of the event published before it to the same partition
# of the same topic (0 for the first): a consumer that has read everything up to that one
# knows it has now read everything up to this one. Messages a producer sent to a topic
# recreated under it (a broker that lost its storage) do not link up, so they can never
# make a consumer claim events it has not read.
PREVIOUS_HEADER = "xentree-previous-position"


class TopicChanged(Exception):
    """The topic was recreated (or lost) while a batch waited for its acknowledgements."""


def relay_lock_key(topic: str) -> int:
    """A stable 64-bit advisory lock key per topic, so relays of other topics never wait."""
    digest = hashlib.sha256(f"xentree-live.relay\x00{topic}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def relay_position(conn: psycopg.Connection[Any], topic: str) -> int:
    """How far the relay has published to `topic` (0 before it starts)."""
    return relay_progress(conn, topic).position


@dataclass(frozen=True)
class RelayProgress:
    """How far the relay has published: every event at or below `position` is in the
    topic whose identity is `topic_id`; `partitions` holds the last position published to
    each partition of it (a partition missing from it holds none), or is None when not
    known (the relay has not published since it started recording them)."""

    position: int
    topic_id: str | None
    partitions: dict[int, int] | None


def relay_progress(conn: psycopg.Connection[Any], topic: str) -> RelayProgress:
    with conn.cursor(row_factory=tuple_row) as cur:  # callers' connections may use any
        row = cur.execute(
            "SELECT position, topic_id, partition_positions FROM relay_position "
            "WHERE topic = %s", (topic,)
        ).fetchone()
    if row is None:
        return RelayProgress(0, None, None)
    partitions = None if row[2] is None else {int(k): int(v) for k, v in row[2].items()}
    return RelayProgress(int(row[0]), row[1], partitions)


class Relay:
    def __init__(self, settings: Settings, app: LiveApplication) -> None:
        self.settings = settings
        self.app = app
        self.topic = settings.kafka_topic
        self._owners = Owners(self._first_event)
        self._conn: psycopg.Connection[Any] | None = None
        self._producer: Producer | None = None
        self._admin: KafkaAdminClient | None = None
        self._active = threading.Event()
        self._topic: tuple[Topic, float] | None = None  # (the topic, when asked)

    @property
    def active(self) -> bool:
        """True while this relay holds the lock (is the one publishing)."""
        return self._active.is_set()

    # ---- the loop -------------------------------------------------------------------

    def run_forever(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    if self._acquire_lock():
                        self._follow(stop)
                    else:
                        stop.wait(self.settings.relay_poll_seconds)
                except TopicChanged:
                    # The unacknowledged batch is dropped with the producer; the next
                    # round finds the new topic and republishes everything to it.
                    log.warning("topic %s changed while publishing", self.topic)
                    self._reset()
                except Exception:
                    # Broker or database trouble: start over with new clients, which is
                    # also what a recreated topic or a restarted server needs.
                    log.exception("relay to %s failed; retrying", self.topic)
                    self._reset()
                    stop.wait(RETRY_SECONDS)
        finally:
            self.close()

    def _follow(self, stop: threading.Event) -> None:
        linger = self.settings.relay_linger_ms / 1000
        while not stop.is_set():
            full = self.run_once() >= self.settings.relay_batch_size
            if not full and self._wait_for_notify() and linger > 0:
                stop.wait(linger)

    def run_once(self) -> int:
        """Publish the next batch after the saved position; the number of events published."""
        conn = self._connection()
        topic_id = self._topic_id()
        position, published = self._start_position(conn, topic_id)
        notifications = self.app.recorder.select_notifications(
            position, self.settings.relay_batch_size, inclusive_of_start=False
        )
        if not notifications:
            return 0
        last_by_partition = self._publish(notifications, published, topic_id)
        conn.execute(
            "UPDATE relay_position SET position = %s, topic_id = %s, updated_at = now(), "
            "partition_positions = partition_positions || %s::jsonb WHERE topic = %s",
            (notifications[-1].id, topic_id, Jsonb({str(p): n for p, n in
                                                    last_by_partition.items()}), self.topic),
        )
        return len(notifications)

    def close(self) -> None:
        self._reset()

    # ---- steps ----------------------------------------------------------------------

    def _start_position(
        self, conn: psycopg.Connection[Any], topic_id: str | None
    ) -> tuple[int, dict[int, int]]:
        """Where to resume: the saved position, and the last position published to each
        partition of the topic (both zero for a topic recreated since)."""
        progress = relay_progress(conn, self.topic)
        if progress.position == 0 and progress.partitions is None:
            # Nothing published yet (no row, or one from before partitions were recorded).
            conn.execute(
                "INSERT INTO relay_position (topic, position, topic_id, partition_positions) "
                "VALUES (%s, 0, %s, '{}') ON CONFLICT DO NOTHING",
                (self.topic, topic_id),
            )
            return 0, {}
        position, stored_id = progress.position, progress.topic_id
        recreated = (
            stored_id != topic_id
            if topic_id is not None and stored_id is not None
            else position > 0 and self._topic_is_empty()
        )
        if recreated:
            log.warning(
                "topic %s was recreated (id %s -> %s): republishing from the start",
                self.topic, stored_id, topic_id,
            )
            conn.execute(
                "UPDATE relay_position SET position = 0, topic_id = %s, updated_at = now(), "
                "partition_positions = '{}' WHERE topic = %s",
                (topic_id, self.topic),
            )
            # The producer's metadata may still describe the old topic: with more
            # partitions than the new one has, it would send to partitions that no longer
            # exist until those sends expire. A new producer reads the new topic's.
            self._close_producer()
            return 0, {}
        return position, progress.partitions or {}

    def _publish(
        self, notifications: Sequence[Notification], published: dict[int, int],
        topic_id: str | None,
    ) -> dict[int, int]:
        """Publish in order and wait for the acks; the last position per partition.
        `published`: the last position already published to each partition of the topic
        whose identity is `topic_id`."""
        producer = self._producer_()
        # The default partitioner's choice (murmur2 of the key, as Kafka's Java client and
        # kafka-python make it), made here so that each message can name the one before it
        # on its partition.
        partitions = self._topic_().partitions
        previous = dict(published)
        last: dict[int, int] = {}
        failed: list[KafkaError] = []
        acked = 0

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            nonlocal acked
            if err is None:
                acked += 1
            else:
                failed.append(err)

        for n in notifications:
            event = self.app.mapper.to_domain_event(n)
            owner = self._owners.resolve(n.originator_id, n.originator_version, event)
            key = str(n.originator_id).encode()
            partition = (partitions[0] if len(partitions) == 1
                         else partitions[_key_hash(key) % len(partitions)])
            producer.produce(
                self.topic,
                key=key,
                value=encode(to_envelope(n, event, owner)),
                headers=[CONTENT_TYPE, (PREVIOUS_HEADER, b"%d" % previous.get(partition, 0))],
                partition=partition,
                on_delivery=delivered,
            )
            previous[partition] = last[partition] = n.id
        deadline = time.monotonic() + FLUSH_TIMEOUT_SECONDS
        while producer.flush(FLUSH_SLICE_SECONDS) and not failed:
            # librdkafka holds messages for a topic the broker no longer has until they
            # expire: a broker that lost its storage must not hold the relay that long.
            if self._topic_id() != topic_id:
                raise TopicChanged(self.topic)
            if time.monotonic() > deadline:
                break
        if failed:
            raise KafkaException(failed[0])
        if acked != len(notifications):
            raise RuntimeError(
                f"the broker acknowledged {acked} of {len(notifications)} events "
                f"within {FLUSH_TIMEOUT_SECONDS:.0f} s"
            )
        return last

    def _first_event(self, originator_id: UUID | str) -> object | None:
        stored = self.app.recorder.select_events(originator_id, lte=1)
        return self.app.mapper.to_domain_event(stored[0]) if stored else None

    def _topic_is_empty(self) -> bool:
        """For brokers without topic ids: a topic holding nothing although we published to
        it has been recreated."""
        admin = self._admin_()
        partitions = [
            TopicPartition(self.topic, p["partition_index"])
            for t in admin.describe_topics([self.topic])
            for p in t["partitions"]
        ]
        offsets = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in partitions})
        return all(o.offset == 0 for o in offsets.values())

    # ---- connections ----------------------------------------------------------------

    def _acquire_lock(self) -> bool:
        conn = self._connection()
        row = conn.execute(
            "SELECT pg_try_advisory_lock(%s)", (relay_lock_key(self.topic),)
        ).fetchone()
        if not (row and row[0]):
            return False
        channel = sql.Identifier(recorder_of(self.app).channel_name)
        conn.execute(sql.SQL("LISTEN {}").format(channel))
        self._active.set()
        log.info("relay to %s is active", self.topic)
        return True

    def _wait_for_notify(self) -> bool:
        """Wait for a commit's notification (True), or the poll interval (False).

        Every commit notifies, and psycopg keeps those that arrive while the relay runs
        its queries; the round that follows publishes everything committed so far, so the
        ones already there are dropped with the one waited for. Taking one per round
        instead let them pile up in the relay's memory under load (hundreds a second), and
        a round never waited for a commit again."""
        conn = self._connection()
        # Each generator holds the connection's lock until closed.
        with closing(conn.notifies(timeout=self.settings.relay_poll_seconds,
                                   stop_after=1)) as heard:
            if next(heard, None) is None:
                return False
        with closing(conn.notifies(timeout=0)) as backlog:
            for _ in backlog:
                pass
        return True

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._active.clear()
            self._conn = psycopg.connect(
                parse_database_url(self.settings.database_url).conninfo(),
                autocommit=True,
                connect_timeout=5,
            )
            # The position is a hint to resume from: one lost in a database crash only
            # republishes a few events (consumers dedupe), so it need not wait for fsync.
            self._conn.execute("SET synchronous_commit = off")
        return self._conn

    def _topic_id(self) -> str | None:
        return self._topic_().id

    def _topic_(self) -> Topic:
        """The topic as last asked of the broker (its id and partitions, one round trip),
        at most TOPIC_CHECK_SECONDS ago."""
        if self._topic is None or time.monotonic() - self._topic[1] > TOPIC_CHECK_SECONDS:
            found = ensure_topic(self._admin_(), self.topic, self.settings.kafka_partitions)
            self._topic = (found, time.monotonic())
        return self._topic[0]

    def _admin_(self) -> KafkaAdminClient:
        if self._admin is None:
            self._admin = new_admin(self.settings.kafka_bootstrap, "xentree-live-relay")
        return self._admin

    def _producer_(self) -> Producer:
        # librdkafka, not kafka-python: produced as the relay does, kafka-python costs
        # ~45 us of CPU per message and Tansu ~14 us, librdkafka ~5 us and Tansu ~8 us
        # (ops/bench_clients.py, ops/results/trials-20261206e).
        if self._producer is None:
            self._producer = Producer({
                "bootstrap.servers": self.settings.kafka_bootstrap,
                "client.id": "xentree-live-relay",
                "acks": "all",
                # An idempotent producer wedges (UnknownProducerId) when the broker forgets
                # its state; we dedupe downstream by envelope id instead.
                "enable.idempotence": False,
                # One request in flight keeps each partition in position order on retries.
                "max.in.flight.requests.per.connection": 1,
                # Only ensure_topic creates the topic, with the configured partitions: a
                # producer sending to a broker that lost its topics would create it anew
                # with the broker's default count.
                "allow.auto.create.topics": False,
                "linger.ms": 5,
                "request.timeout.ms": 10_000,
                "message.timeout.ms": 25_000,
                "logger": log,
            })
        return self._producer

    def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            # Unacknowledged messages are dropped: the position was not saved past them.
            _close_quietly(lambda: producer.purge())
            _close_quietly(producer.close)

    def _reset(self) -> None:
        """Drop every client; closing the connection releases the lock for a standby."""
        self._active.clear()
        self._close_producer()
        admin, conn = self._admin, self._conn
        self._admin = self._conn = None
        self._topic = None
        if admin is not None:
            _close_quietly(admin.close)
        if conn is not None:
            _close_quietly(conn.close)


@functools.lru_cache(maxsize=1 << 16)
def _key_hash(key: bytes) -> int:
    """The default partitioner's hash of a key (kafka-python's murmur2, in the interpreter:
    a sixteenth of the relay's time when it was computed for every message; an aggregate's
    events all have its key, so the hash of a live one is remembered)."""
    return int(murmur2(key)) & 0x7FFFFFFF


def _close_quietly(close: Callable[[], object]) -> None:
    try:
        close()
    except Exception:
        log.debug("closing a relay client failed", exc_info=True)


def run_relay(settings: Settings, stop: threading.Event) -> None:
    """Run a relay (active or standby) until `stop` is set."""
    app = build_application(settings)
    try:
        Relay(settings, app).run_forever(stop)
    finally:
        app.close()
