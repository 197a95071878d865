"""Projection workers: one Kafka consumer per projector process, applying each polled
batch to every read model the process keeps and to each one's per-partition tracking, in
one PostgreSQL transaction.

One consumer for all the read models, not a consumer group per projection: each group
fetches, checks and decodes every message of the topic, and commits its own transaction
per poll, so six groups cost the broker, the projector and PostgreSQL six times the work
for the same events (measured in README "Performance"). Each read model keeps its own
tracking rows and its own watermark, so one can be rebuilt, or run in a process of its
own (`xentree-live project quota`, its own group), without touching the others.

PostgreSQL, not Kafka's committed offsets, is the truth for progress: on assignment each
partition is sought to the offset after the last one applied there. Rows take an event only
at the next version of their aggregate, so redelivery and republishing change nothing.

The watermark: a partition's `position` is a position up to which every event of the
partition is applied. The relay publishes each partition in position order, and each
message names the position of the one published before it to the same partition (the
`xentree-previous-position` header). The partition's `chain` is how far its messages have
been read without a hole: a message whose predecessor is at or below the chain extends it
to the message's own position. The position only rises to the chain, so messages that do
not link up (a producer's batch that reached a topic recreated under it, ahead of the
relay's republishing of everything before it) are applied by version but claim nothing.
An idle partition whose last published event (the relay records it per partition) is
applied, or whose consumer position has reached the end offset measured after reading the
relay's position R, holds no unapplied event at or below R, so its position may rise to R.
The minimum over all partitions is then a correct `as_of`.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from uuid import UUID

import msgspec
import psycopg
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from kafka import KafkaAdminClient
from psycopg import sql
from psycopg.rows import dict_row, tuple_row

from adapters.projector.notices import announce
from adapters.relay.envelope import Envelope, decode
from adapters.relay.relay import PREVIOUS_HEADER, relay_progress
from adapters.relay.topic import TopicMissing, ensure_topic, new_admin, topic_id
from application.settings import Settings, parse_database_url
from projections import profile, quota, revocations, sessions, transcripts
from projections.stream import Step, step

log = logging.getLogger(__name__)

R = TypeVar("R", bound=msgspec.Struct)

_rows_encoder = msgspec.json.Encoder()

# How long a poll waits for records before the idle partitions' watermarks are moved up to
# the relay's position: the delay of `as_of` (and of read-your-writes) when little happens.
POLL_TIMEOUT_SECONDS = 0.05
TOPIC_CHECK_SECONDS = 2.0
OFFSET_COMMIT_SECONDS = 5.0
IDLE_ADVANCE_SECONDS = 0.02
# How long the broker may hold a fetch that found nothing. Tansu does not always answer a
# held fetch when records arrive: at 500 commands/s a 500 ms wait gave projector stalls
# of 170-260 ms (kafka-python and Tansu alone, no PostgreSQL), 100 ms gave ~135 ms and
# 50 ms at most ~37 ms. An idle projector then asks twenty times a second.
FETCH_MAX_WAIT_MS = 50
RETRY_SECONDS = 1.0
# Tansu completes a group join only after about half the session timeout, and the
# rebalance timeout (max poll interval) must be short for the first join to finish.
CONSUMER_GROUP_CONFIG: dict[str, Any] = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1000,
    "max.poll.interval.ms": 10000,
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
}

Polled = Mapping[int, Sequence[Message]]  # partition -> its messages, in offset order


@dataclass(frozen=True)
class ProjectionSpec(Generic[R]):
    """Where a pure projection's rows live: one row per aggregate, keyed by its id."""

    table: str
    key: str
    row_type: type[R]
    aggregate_type: str
    apply: Callable[[R | None, Envelope], R | None]


PROJECTIONS: dict[str, ProjectionSpec[Any]] = {
    "quota": ProjectionSpec("rm_quota", "ledger_id", quota.QuotaRow, quota.AGGREGATE_TYPE,
                            quota.apply),
    "sessions": ProjectionSpec("rm_sessions", "session_id", sessions.SessionRow,
                               sessions.AGGREGATE_TYPE, sessions.apply),
    "profile": ProjectionSpec("rm_profile", "account_id", profile.ProfileRow,
                              profile.AGGREGATE_TYPE, profile.apply),
    "transcripts": ProjectionSpec("rm_transcripts", "transcript_id", transcripts.TranscriptRow,
                                  transcripts.AGGREGATE_TYPE, transcripts.apply),
    "revocations": ProjectionSpec("rm_revocations", "grant_id", revocations.RevocationRow,
                                  revocations.GRANT_AGGREGATE, revocations.apply_grant),
    "revocation_cutoffs": ProjectionSpec("rm_revocation_cutoffs", "tenant_aggregate",
                                         revocations.CutoffRow, revocations.TENANT_AGGREGATE,
                                         revocations.apply_tenant),
}


class TopicRecreated(Exception):
    pass


Link = tuple[int | None, int | None]  # (previous position named, own position)


@dataclass(frozen=True)
class Tracked:
    """One read model's progress on one partition: every event of the partition at or
    below `position` is applied; every message up to `chain` has been read (of the topic
    now consumed); `offset` is the last Kafka offset applied."""

    position: int = 0
    offset: int = -1
    chain: int = 0

    def after(self, links: Sequence[Link], offset: int) -> Tracked:
        chain = extend_chain(self.chain, links)
        return Tracked(max(self.position, chain), offset, chain)


def extend_chain(chain: int, links: Iterable[Link]) -> int:
    """How far a partition has been read without a hole, after messages in offset order.
    A message without a link (published before the relay named predecessors) extends the
    chain as the old watermark did; an undecodable one, whose position is unknown, passes
    its link on to the message after it."""
    carried = False
    for previous, position in links:
        linked = carried or previous is None or previous <= chain
        carried = False
        if not linked:
            continue
        if position is None:
            carried = True
        elif position > chain:
            chain = position
    return chain


def previous_position(headers: Any) -> int | None:
    """The position a message's headers (name, value pairs) name as its predecessor's on
    its partition."""
    for name, value in headers or ():
        if name == PREVIOUS_HEADER:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


WATERMARK = (
    "SELECT count(*) AS partitions, coalesce(min(position), 0) AS mark "
    "FROM projection_partitions WHERE projection = %s"
)


def projection_watermark(conn: psycopg.Connection[Any], name: str) -> int:
    """Every event at or below this position has been applied by the projection (0 until
    every partition of the topic has a tracking row, which the projector creates)."""
    # A tuple cursor: callers' connections may use any row factory.
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(WATERMARK, (name,)).fetchone()
    return int(row[1]) if row and row[0] else 0


class Projector:
    def __init__(
        self,
        settings: Settings,
        *names: str,
        group_id: str | None = None,
    ) -> None:
        if not names:
            raise ValueError("a projector needs at least one projection")
        unknown = [n for n in names if n not in PROJECTIONS]
        if unknown:
            raise ValueError(f"unknown projection(s): {', '.join(unknown)}")
        self.settings = settings
        self.names = tuple(dict.fromkeys(names))
        self.specs = {name: PROJECTIONS[name] for name in self.names}
        self.topic = settings.kafka_topic
        # One group per set of projections and topic: two deployments (or test stacks)
        # sharing a broker must not join one group with different subscriptions.
        self.group_id = group_id or f"xentree-live.{'+'.join(self.names)}.{self.topic}"
        self._conn: psycopg.Connection[Any] | None = None
        self._admin: KafkaAdminClient | None = None
        self._consumer: Consumer | None = None
        self._topic_id: str | None = None
        self._topic_checked_at = 0.0
        self._committed_at = 0.0
        self._idle_advanced_at = 0.0
        # projection -> partition -> its progress as last recorded.
        self._progress: dict[str, dict[int, Tracked]] = {n: {} for n in self.names}

    @property
    def name(self) -> str:
        return "+".join(self.names)

    # ---- the loop -------------------------------------------------------------------

    def run_forever(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    self.poll_once()
                except TopicRecreated:
                    log.warning("topic %s was recreated: %s re-consumes it from the start",
                                self.topic, self.name)
                    self._reset()
                except Exception:
                    log.exception("projection %s failed; retrying", self.name)
                    self._reset()
                    stop.wait(RETRY_SECONDS)
        finally:
            self.close()

    def poll_once(self) -> int:
        """Apply one polled batch (or advance idle partitions); the number of records."""
        consumer = self._consumer_()
        polled = self._poll(consumer)
        if not polled:
            self._advance_idle(consumer)
            return 0
        self.apply_records(polled)
        count = sum(len(messages) for messages in polled.values())
        # Partitions with nothing new must not hold the watermark back while others are
        # busy (a poll that is never empty would otherwise never let them advance): before
        # the linger, so the batch just applied shows in the watermark without waiting.
        if time.monotonic() - self._idle_advanced_at > IDLE_ADVANCE_SECONDS:
            self._advance_idle(consumer)
        if count < self.settings.projection_batch_size and self.settings.projection_linger_ms:
            # Let more events gather before the next fetch: fewer, larger transactions
            # (and broker requests) under load, for that much more lag.
            time.sleep(self.settings.projection_linger_ms / 1000)
        if time.monotonic() - self._committed_at > OFFSET_COMMIT_SECONDS:
            self._commit_offsets(consumer)
        self._check_topic_when_due()
        return count

    def _poll(self, consumer: Consumer) -> Polled:
        """The messages fetched so far, up to a batch, waiting up to the poll timeout for
        the first (a batch consume would wait that long for a whole batch)."""
        first = consumer.poll(POLL_TIMEOUT_SECONDS)
        if first is None:
            return {}
        messages = [first]
        if self.settings.projection_batch_size > 1:
            messages += consumer.consume(self.settings.projection_batch_size - 1, 0)
        polled: dict[int, list[Message]] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._MAX_POLL_EXCEEDED:
                    # This process stood still past the poll interval (stopped, or stalled)
                    # and left the group. The next poll joins it again, and the assignment
                    # seeks from tracking. Not a new consumer: Tansu never again assigns
                    # partitions in a group that a member left in that state.
                    log.warning("%s left its consumer group after a stall; rejoining",
                                self.name)
                    continue
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(error)
            polled.setdefault(message.partition() or 0, []).append(message)
        return polled

    def close(self) -> None:
        self._reset()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ---- applying -------------------------------------------------------------------

    def apply_records(self, polled: Polled) -> None:
        """Apply a batch to every read model and record each one's progress, in one
        transaction."""
        envelopes: list[Envelope] = []
        batch: dict[int, tuple[list[Link], int]] = {}
        for partition, messages in polled.items():
            links: list[Link] = []
            for message in messages:
                previous = previous_position(message.headers())
                try:
                    envelope = decode(message.value() or b"")
                except msgspec.DecodeError:
                    log.error("skipping undecodable message %s[%d]@%s",
                              self.topic, partition, message.offset())
                    links.append((previous, None))
                    continue
                envelopes.append(envelope)
                links.append((previous, envelope.position))
            batch[partition] = (links, messages[-1].offset() or 0)
        progress = {
            name: {
                partition: self._progress[name].get(partition, Tracked()).after(links, offset)
                for partition, (links, offset) in batch.items()
            }
            for name in self.names
        }
        for partition, (links, _) in batch.items():
            chain = min(progress[name][partition].chain for name in self.names)
            ahead = max((p for _, p in links if p is not None), default=0)
            if ahead > chain:
                # Rare: a topic recreated under a producer, or events missing from Kafka.
                log.warning("partition %d: messages up to position %d do not link up with "
                            "what was read (up to %d); the watermark waits for the ones "
                            "before them", partition, ahead, chain)
        conn = self._connection()
        with conn.transaction():
            changed = {name: self._apply(conn, self.specs[name], envelopes)
                       for name in self.names}
            self._record_progress(conn, progress)
            if "quota" in changed:
                announce(conn, projection_watermark(conn, "quota"), changed["quota"])
        for name, partitions in progress.items():
            self._progress[name].update(partitions)

    def _apply(
        self, conn: psycopg.Connection[Any], spec: ProjectionSpec[Any],
        envelopes: Iterable[Envelope],
    ) -> set[UUID]:
        """Apply the events of `spec`'s aggregate type; the keys of the rows changed."""
        relevant = [e for e in envelopes if e.aggregatetype == spec.aggregate_type]
        if not relevant:
            return set()
        rows = self._load_rows(conn, spec, {UUID(e.subject) for e in relevant})
        changed: dict[UUID, Any] = {}
        for envelope in relevant:
            key = UUID(envelope.subject)
            current = rows.get(key)
            new = spec.apply(current, envelope)
            if new is None:
                version = current.version if current is not None else None
                if step(version, envelope.aggregateversion) is Step.GAP:
                    log.error("%s: event %s arrived before version %s of its aggregate",
                              spec.table, envelope.id, (version or 0) + 1)
                continue
            rows[key] = changed[key] = new
        self._save_rows(conn, spec, changed)
        return set(changed)

    @staticmethod
    def _load_rows(
        conn: psycopg.Connection[Any], spec: ProjectionSpec[Any], keys: set[UUID]
    ) -> dict[UUID, Any]:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(_select_for_update(spec.table, spec.key), (list(keys),))
            loaded = cur.fetchall()
        rows: dict[UUID, Any] = {}
        for row in loaded:
            key = row.pop(spec.key)
            rows[key] = msgspec.convert(row, spec.row_type)
        return rows

    @staticmethod
    def _save_rows(
        conn: psycopg.Connection[Any], spec: ProjectionSpec[Any], rows: Mapping[UUID, Any]
    ) -> None:
        upsert_rows(conn, spec, rows)

    def _record_progress(
        self,
        conn: psycopg.Connection[Any],
        progress: Mapping[str, Mapping[int, Tracked]],
    ) -> None:
        entries = [
            (name, partition, t.position, t.offset, t.chain)
            for name, partitions in progress.items()
            for partition, t in partitions.items()
        ]
        names, partitions, positions, offsets, chains = (
            list(c) for c in zip(*entries, strict=True)
        )
        conn.execute(
            "INSERT INTO projection_partitions AS p "
            "(projection, partition, position, kafka_offset, chain, topic_id) "
            "SELECT u.projection, u.partition, u.position, u.kafka_offset, u.chain, %s "
            "FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::bigint[], %s::bigint[]) "
            "AS u(projection, partition, position, kafka_offset, chain) "
            "ON CONFLICT (projection, partition) DO UPDATE SET "
            "position = GREATEST(p.position, EXCLUDED.position), "
            "kafka_offset = CASE WHEN p.topic_id IS DISTINCT FROM EXCLUDED.topic_id "
            "THEN EXCLUDED.kafka_offset "
            "ELSE GREATEST(p.kafka_offset, EXCLUDED.kafka_offset) END, "
            "chain = CASE WHEN p.topic_id IS DISTINCT FROM EXCLUDED.topic_id "
            "THEN EXCLUDED.chain ELSE GREATEST(p.chain, EXCLUDED.chain) END, "
            "topic_id = EXCLUDED.topic_id, updated_at = now()",
            (self._topic_id, names, partitions, positions, offsets, chains),
        )

    def _commit_offsets(self, consumer: Consumer) -> None:
        """Tell Kafka how far the group got, for operators' lag tools. Informational only:
        progress is read back from PostgreSQL, so this runs every few seconds, not per
        batch, and does not wait for the broker's answer."""
        self._committed_at = time.monotonic()
        try:
            consumer.commit(asynchronous=True)
        except Exception:
            log.debug("committing offsets of %s to Kafka failed", self.name, exc_info=True)

    # ---- the idle watermark step ----------------------------------------------------

    def _advance_idle(self, consumer: Consumer) -> None:
        self._idle_advanced_at = time.monotonic()
        assigned = [tp.partition for tp in consumer.assignment()]
        if not assigned:
            # No partitions (the group has not assigned them yet, or the topic went with
            # the broker's storage): a recreated topic needs a new consumer.
            self._check_topic_when_due()
            return
        conn = self._connection()
        relay = relay_progress(conn, self.topic)  # read before the end offsets, if any
        relayed = relay.position
        behind = [p for p in assigned if self._applied(p) < relayed]
        if not behind:
            self._check_topic_when_due()
            return
        if relay.topic_id != self._topic_id:
            # The relay's position is of another topic than the one we consume (it has
            # not republished to a recreated topic yet, or we have not noticed it): it says
            # nothing about what this one holds.
            self._check_topic_when_due()
            return
        if relay.partitions is not None and relay.topic_id is not None:
            # The relay says what it last published to each partition of the topic we
            # consume: a partition whose last event up to `relayed` is applied holds
            # nothing unapplied at or below it. No broker round trip.
            published = relay.partitions
            caught_up = [p for p in behind if self._applied(p) >= published.get(p, 0)]
            self._check_topic_when_due()
        else:
            # The end offsets and our positions must be of the topic we consume: a
            # recreated topic's offsets say nothing about what we applied from the old one.
            # One check after reading them suffices: a topic's identity never comes back
            # once replaced, so if it is still ours now, it was ours when they were read.
            ends = {p: consumer.get_watermark_offsets(TopicPartition(self.topic, p),
                                                      timeout=10) for p in behind}
            self._check_topic()
            caught_up = [p for p in behind if self._next_offset(p) >= max(ends[p])]
        if not caught_up:
            return
        with conn.transaction():
            conn.execute(
                "UPDATE projection_partitions SET position = GREATEST(position, %s), "
                "updated_at = now() WHERE projection = ANY(%s) AND partition = ANY(%s)",
                (relayed, list(self.names), caught_up),
            )
            if "quota" in self.names:
                announce(conn, projection_watermark(conn, "quota"), ())
        for progress in self._progress.values():
            for partition in caught_up:
                t = progress.get(partition, Tracked())
                progress[partition] = Tracked(max(t.position, relayed), t.offset, t.chain)

    def _next_offset(self, partition: int) -> int:
        """The offset after the last one every read model applied on `partition`."""
        return 1 + min(self._progress[n].get(partition, Tracked()).offset for n in self.names)

    def _applied(self, partition: int) -> int:
        """Every event of `partition` at or below this position is applied, by every read
        model of this projector."""
        return min(self._progress[n].get(partition, Tracked()).position for n in self.names)

    # ---- the topic and the consumer -------------------------------------------------

    def _check_topic_when_due(self) -> None:
        if time.monotonic() - self._topic_checked_at > TOPIC_CHECK_SECONDS:
            self._check_topic()

    def _check_topic(self) -> None:
        self._topic_checked_at = time.monotonic()
        try:
            current = topic_id(self._admin_(), self.topic)
        except TopicMissing:
            current = None
        if current != self._topic_id:
            raise TopicRecreated(self.topic)

    def _consumer_(self) -> Consumer:
        if self._consumer is not None:
            return self._consumer
        admin = self._admin_()
        # Created here too, so projectors may start before the first relay.
        topic = ensure_topic(admin, self.topic, self.settings.kafka_partitions)
        self._topic_id = topic.id
        self._topic_checked_at = time.monotonic()
        self._prepare_tracking(len(topic.partitions))
        # librdkafka, not kafka-python: kafka-python's fetch and decode cost ~9 us of CPU
        # per message, librdkafka's ~1 us (ops/bench_clients.py, trials-20261206e).
        consumer = Consumer({
            "bootstrap.servers": self.settings.kafka_bootstrap,
            # One group per incarnation of the topic. Tansu wedges a group whose member
            # left while its join was cut short by a broker restart: the next member never
            # gets an assignment (kafka-python left no such group; librdkafka does). The
            # restart recreates the topic, so the next consumer joins a group of its own.
            "group.id": (self.group_id if self._topic_id is None
                         else f"{self.group_id}.{self._topic_id}"),
            "client.id": "xentree-live-projector",
            # An empty fetch is held at most this long (see FETCH_MAX_WAIT_MS).
            "fetch.wait.max.ms": FETCH_MAX_WAIT_MS,
            "fetch.min.bytes": 1,
            # librdkafka fetches ahead of the polls, by default up to 64 MiB a partition:
            # a projector catching up from the topic's start need not hold that much.
            "queued.max.messages.kbytes": 8192,
            # Only ensure_topic creates the topic (with the configured partition count).
            "allow.auto.create.topics": False,
            "logger": log,
            **CONSUMER_GROUP_CONFIG,
        })
        consumer.subscribe([self.topic], on_assign=self._on_assign)
        self._consumer = consumer
        return consumer

    def _on_assign(self, consumer: Consumer, assigned: list[TopicPartition]) -> None:
        resumed = self.seek_from_tracking(assigned)
        log.info("%s resumes %s", self.name,
                 ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in resumed))
        consumer.assign(resumed)

    def _prepare_tracking(self, partitions: int) -> None:
        """One tracking row per partition of the topic, so the watermark stays 0 until
        every partition has been followed."""
        conn = self._connection()
        with conn.transaction():
            # Tracking of another topic: the position each partition reached there holds
            # here only as their minimum (with another partition count, a partition's
            # events are other partitions' here), and the reading starts over.
            conn.execute(
                "UPDATE projection_partitions AS p SET position = m.mark, kafka_offset = -1, "
                "chain = 0, topic_id = NULL, updated_at = now() "
                "FROM (SELECT projection, min(position) AS mark FROM projection_partitions "
                "WHERE projection = ANY(%s) GROUP BY projection) AS m "
                "WHERE p.projection = m.projection AND p.topic_id IS NOT NULL "
                "AND p.topic_id IS DISTINCT FROM %s",
                (list(self.names), self._topic_id),
            )
            conn.execute(
                "DELETE FROM projection_partitions WHERE projection = ANY(%s) "
                "AND partition >= %s",
                (list(self.names), partitions),
            )
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO projection_partitions (projection, partition) VALUES (%s, %s) "
                    "ON CONFLICT DO NOTHING",
                    [(n, p) for n in self.names for p in range(partitions)],
                )

    def seek_from_tracking(self, assigned: Iterable[TopicPartition]) -> list[TopicPartition]:
        """Where to resume each partition: after the last offset every read model applied
        from this same topic (one further ahead skips what it has by aggregate version)."""
        rows = self._connection().execute(
            "SELECT projection, partition, position, kafka_offset, chain, topic_id "
            "FROM projection_partitions WHERE projection = ANY(%s)",
            (list(self.names),),
        ).fetchall()
        tracked = {
            (n, int(p)): (Tracked(int(pos), int(off), int(chain)), tid)
            for n, p, pos, off, chain, tid in rows
        }
        resumed = []
        for tp in assigned:
            resume = None
            for name in self.names:
                t, tid = tracked.get((name, tp.partition), (Tracked(), None))
                if tid is None or tid != self._topic_id:
                    t = Tracked(t.position)  # this topic is read from its start
                self._progress[name][tp.partition] = t
                resume = t.offset if resume is None else min(resume, t.offset)
            start = resume + 1 if resume is not None and resume >= 0 else OFFSET_BEGINNING
            resumed.append(TopicPartition(tp.topic, tp.partition, start))
        return resumed

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                parse_database_url(self.settings.database_url).conninfo(),
                autocommit=True,
                connect_timeout=5,
            )
            # Read models and their tracking commit together, so a transaction lost in a
            # database crash loses both: the projector re-applies it from Kafka. Nothing
            # derived needs to wait for fsync.
            self._conn.execute("SET synchronous_commit = off")
        return self._conn

    def _admin_(self) -> KafkaAdminClient:
        if self._admin is None:
            self._admin = new_admin(self.settings.kafka_bootstrap, f"xentree-live-{self.name}")
        return self._admin

    def _reset(self) -> None:
        consumer, admin = self._consumer, self._admin
        self._consumer = self._admin = None
        for progress in self._progress.values():
            progress.clear()
        for client in (consumer, admin):
            if client is None:
                continue
            try:
                client.close()
            except Exception:
                log.debug("closing a Kafka client of %s failed", self.name, exc_info=True)


def upsert_rows(
    conn: psycopg.Connection[Any],
    spec: ProjectionSpec[Any],
    rows: Mapping[UUID, Any],
    table: str | None = None,
) -> None:
    """Upsert read-model rows (into `table`, by default the projection's own) in one
    statement: the batch goes as one JSON array that PostgreSQL turns into rows of the
    table's own type, one round trip however many rows (an executemany would be a
    pipelined statement per row)."""
    if not rows:
        return
    query = _upsert(table or spec.table, spec.key, spec.row_type.__struct_fields__)
    batch = _rows_encoder.encode(
        [{spec.key: key, **msgspec.structs.asdict(row)} for key, row in rows.items()]
    )
    conn.execute(query, (batch.decode(),))


# The statements are composed once per table: composing them anew for every batch was
# about 5 % of the projector's interpreter time under load.
@functools.cache
def _select_for_update(table: str, key: str) -> str:
    return sql.SQL("SELECT * FROM {} WHERE {} = ANY(%s) FOR UPDATE").format(
        sql.Identifier(table), sql.Identifier(key)
    ).as_string(None)


@functools.cache
def _upsert(table: str, key: str, fields: tuple[str, ...]) -> str:
    target = sql.Identifier(table)
    columns = sql.SQL(", ").join(map(sql.Identifier, [key, *fields]))
    return sql.SQL(
        "INSERT INTO {table} ({columns}) SELECT {columns} "
        "FROM jsonb_populate_recordset(NULL::{table}, %s::jsonb) "
        "ON CONFLICT ({key}) DO UPDATE SET {updates}"
    ).format(
        table=target,
        key=sql.Identifier(key),
        columns=columns,
        updates=sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(f)) for f in fields
        ),
    ).as_string(None)


def run_projectors(
    settings: Settings,
    stop: threading.Event,
    names: Sequence[str] = tuple(PROJECTIONS),
) -> None:
    """Run one consumer for the named projections until `stop` is set."""
    Projector(settings, *names).run_forever(stop)
