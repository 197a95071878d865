"""The Kafka-fed quota and sessions projections on real PostgreSQL and Tansu."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import msgspec
import psycopg
import pytest
from confluent_kafka import Message
from psycopg.rows import dict_row

from adapters.bootstrap import build_application
from adapters.eventstore.schema import migrate
from adapters.projector.runner import Projector, projection_watermark
from adapters.readmodels import quota_row, session_row, session_rows, watermark
from adapters.relay.envelope import encode, to_envelope
from adapters.relay.relay import PREVIOUS_HEADER, Relay, relay_position
from application.live import LiveApplication
from application.principal import Principal
from application.settings import Settings
from domain.ids import ledger_id
from domain.ledger import UsageLedger
from domain.periods import period_bounds
from domain.session import LiveSession
from ops.stack import EmbeddedKafka
from tests.support.clock import Clock
from tests.support.waiting import running, wait_until

NAMES = ("quota", "sessions")


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
    with psycopg.connect(database_url, autocommit=True) as conn:
        # Read models are derived: each test starts them empty on its own topic.
        conn.execute("DELETE FROM rm_quota; DELETE FROM rm_sessions;")
        conn.execute("DELETE FROM projection_partitions")
    return s


@pytest.fixture
def app(settings: Settings) -> Iterator[LiveApplication]:
    a = build_application(settings)
    yield a
    a.close()


@pytest.fixture
def relay(settings: Settings, app: LiveApplication) -> Iterator[Relay]:
    r = Relay(settings, app)
    with running(r.run_forever):
        yield r


@pytest.fixture
def conn(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        yield c


def projectors(settings: Settings) -> list[Projector]:
    group = secrets.token_hex(4)
    return [Projector(settings, name, group_id=f"xentree-live.{name}.{group}") for name in NAMES]


class Running:
    """Both projectors, each in its own thread, as `xentree-live project` runs them."""

    def __init__(self, settings: Settings) -> None:
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=p.run_forever, args=(self.stop,), daemon=True)
            for p in projectors(settings)
        ]

    def __enter__(self) -> Running:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def user() -> Principal:
    return Principal(
        tenant_id=f"t-{secrets.token_hex(4)}",
        user_id=f"u-{secrets.token_hex(4)}",
        scopes=frozenset({"live:read", "live:write"}),
        credential="bearer",
    )


def body(answer: Any) -> dict[str, Any]:
    result: dict[str, Any] = msgspec.json.decode(answer.body)
    return result


def activity(app: LiveApplication, users: int = 3) -> tuple[list[tuple[Principal, str]], int]:
    """Each user runs one finished and one still active session."""
    sessions, last = [], 0
    for _ in range(users):
        p, clock = user(), Clock()
        sid = body(app.start_session(p, "voice", clock))["session_id"]
        clock.advance(12.5)
        app.heartbeat(p, sid, clock)
        clock.advance(3)
        app.end_session(p, sid, "client", clock)
        sid2 = body(app.start_session(p, "avatar", clock))["session_id"]
        clock.advance(20)
        answer = app.heartbeat(p, sid2, clock)
        assert answer.position is not None
        sessions += [(p, sid), (p, sid2)]
        last = answer.position
    return sessions, last


def caught_up(conn: psycopg.Connection[Any], position: int) -> bool:
    return all(projection_watermark(conn, name) >= position for name in NAMES)


def head(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT coalesce(max(notification_id), 0) FROM xentree_live_events")
    return int(row.fetchone()[0])  # type: ignore[index]


def snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[dict[str, Any]]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return {
            "quota": cur.execute("SELECT * FROM rm_quota ORDER BY ledger_id").fetchall(),
            "sessions": cur.execute("SELECT * FROM rm_sessions ORDER BY session_id").fetchall(),
        }


def test_rows_equal_the_aggregates(
    settings: Settings, app: LiveApplication, relay: Relay, conn: psycopg.Connection[Any]
) -> None:
    assert watermark(conn, "quota") == 0  # no partition followed yet
    sessions, last = activity(app)
    with Running(settings):
        wait_until(lambda: caught_up(conn, last), 25, "the projections to catch up")
    for p, sid in sessions:
        agg = app.repository.get(UUID(sid))
        assert isinstance(agg, LiveSession)
        row = session_row(conn, p.tenant_id, p.user_id, sid)
        assert row is not None
        assert (row["session_seconds"], row["ended_at"], row["end_reason"]) == (
            agg.session_seconds, agg.ended_at, agg.end_reason
        )
        assert (row["started_at"], row["last_billed_at"], row["version"]) == (
            agg.started_at, agg.bill_point, agg.version
        )
        assert session_row(conn, "another-tenant", p.user_id, sid) is None
        start = period_bounds(agg.started_at)[0]
        ledger = app.repository.get(ledger_id(p.tenant_id, p.user_id, start))
        assert isinstance(ledger, UsageLedger)
        quota = quota_row(conn, p.tenant_id, p.user_id, start)
        assert quota is not None
        assert (quota["used_seconds"], quota["limit_seconds"], quota["plan"]) == (
            ledger.used_seconds, ledger.limit_seconds, ledger.plan
        )
        assert [a["session_id"] for a in quota["active"]] == list(ledger.active)
        assert quota["version"] == ledger.version
    # The session list: newest first, by keyset pages.
    p = sessions[0][0]
    first = session_rows(conn, p.tenant_id, p.user_id, 1)
    rest = session_rows(
        conn, p.tenant_id, p.user_id, 5, (first[0]["started_at"], str(first[0]["session_id"]))
    )
    assert [str(r["session_id"]) for r in first + rest] == [sessions[1][1], sessions[0][1]]


def test_redelivery_and_rebuild_give_the_same_rows(
    settings: Settings, app: LiveApplication, relay: Relay, conn: psycopg.Connection[Any]
) -> None:
    _, last = activity(app)
    with Running(settings):
        wait_until(lambda: caught_up(conn, last), 25, "the projections to catch up")
    live = snapshot(conn)
    assert live["quota"] and live["sessions"]

    # Redelivery: forget the progress, keep the rows; every message is applied again.
    conn.execute("DELETE FROM projection_partitions")
    with Running(settings):
        wait_until(lambda: caught_up(conn, head(conn)), 25, "the re-consumption")
    assert snapshot(conn) == live

    # Rebuild: drop the rows too, and reconsume the topic from its start.
    conn.execute("DELETE FROM rm_quota; DELETE FROM rm_sessions; DELETE FROM projection_partitions")
    with Running(settings):
        wait_until(lambda: caught_up(conn, head(conn)), 25, "the rebuild")
    assert snapshot(conn) == live


def test_the_watermark_never_claims_an_unapplied_event(
    settings: Settings, app: LiveApplication, relay: Relay, conn: psycopg.Connection[Any]
) -> None:
    p, clock = user(), Clock()
    started = app.start_session(p, "voice", clock)
    sid = body(started)["session_id"]
    assert started.position is not None
    first = started.position
    checked = 0
    with Running(settings):
        # From here on the session's first event is always at or below the watermark,
        # so every heartbeat below checks the claim at least once.
        wait_until(lambda: caught_up(conn, first), 25, "the projections to start")
        for _ in range(40):
            clock.advance(1)
            answer = app.heartbeat(p, sid, clock)
            mark = watermark(conn, "sessions")
            row = session_row(conn, p.tenant_id, p.user_id, sid)
            # How many of the session's events lie at or below the watermark.
            below = conn.execute(
                "SELECT count(*) FROM xentree_live_events "
                "WHERE originator_id = %s AND notification_id <= %s",
                (UUID(sid), mark),
            ).fetchone()
            assert below is not None
            if below[0]:
                assert row is not None and row["version"] >= below[0]
                checked += 1
        assert answer.position is not None
        final = answer.position
        wait_until(lambda: watermark(conn, "sessions") >= final, 10, "the last heartbeat")
    row = session_row(conn, p.tenant_id, p.user_id, sid)
    assert row is not None and row["session_seconds"] == 40
    assert checked > 0


def test_projections_follow_a_recreated_topic(
    settings: Settings,
    app: LiveApplication,
    relay: Relay,
    conn: psycopg.Connection[Any],
    kafka_broker: EmbeddedKafka,
) -> None:
    _, before = activity(app, 1)
    with Running(settings):
        wait_until(lambda: caught_up(conn, before), 25, "the projections to catch up")
        kafka_broker.restart()
        sessions, after = activity(app, 1)
        wait_until(lambda: caught_up(conn, after), 25, "the projections after the restart")
    p, sid = sessions[-1]
    row = session_row(conn, p.tenant_id, p.user_id, sid)
    agg = app.repository.get(UUID(sid))
    assert row is not None and row["session_seconds"] == agg.session_seconds == 20


def test_quiet_partitions_do_not_hold_the_watermark_back(
    settings: Settings, app: LiveApplication, relay: Relay, conn: psycopg.Connection[Any]
) -> None:
    """One session's heartbeats land on one partition; a busy projector, whose polls always
    bring records, must still let the quiet partitions' watermarks rise."""
    p, clock = user(), Clock()
    sid = body(app.start_session(p, "voice", clock))["session_id"]
    projector = Projector(settings, "sessions", group_id=f"x.sessions.{secrets.token_hex(4)}")
    poll = projector._poll

    def never_empty(consumer: Any) -> Any:
        while not (polled := poll(consumer)):
            pass
        return polled

    projector._poll = never_empty  # type: ignore[method-assign]  # the idle path never runs
    try:
        first: int | None = None
        for _ in range(30):
            clock.advance(1)
            position = app.heartbeat(p, sid, clock).position
            assert position is not None
            first = first or position
            # The relay records how far it published only after the broker's ack.
            wait_until(lambda at=position: relay_position(conn, settings.kafka_topic) >= at,
                       what="the relay to record its position")
            # A poll may bring the previous heartbeat rather than this one (fetches run
            # ahead of polls): past the first heartbeat is the proof that the quiet
            # partitions rose with the busy one.
            projector.poll_once()
            if watermark(conn, "sessions") >= first:
                return
        raise AssertionError("the watermark stayed behind the quiet partitions")
    finally:
        projector.close()


def test_a_projector_that_stood_still_past_the_poll_interval_rejoins(
    settings: Settings, app: LiveApplication, relay: Relay, conn: psycopg.Connection[Any]
) -> None:
    """A projector that stood still longer than the consumer group allows (stopped, or a
    long stall) is put out of its group. Its next polls join again with the same consumer
    and it goes on applying. (A new consumer in the group, after closing the old one, was
    never assigned partitions again by Tansu: the bench's paused pipeline wedged it.)"""
    p, clock = user(), Clock()
    sid = body(app.start_session(p, "voice", clock))["session_id"]
    projector = Projector(settings, "sessions", group_id=f"x.stall.{secrets.token_hex(4)}")
    try:
        first = relay_position_after(app, conn, settings, p, sid, clock)
        wait_until(lambda: projector.poll_once() >= 0 and watermark(conn, "sessions") >= first,
                   30, "the first heartbeat to be applied")
        consumer = projector._consumer
        time.sleep(11)  # past max.poll.interval.ms (10 s): the group puts it out
        second = relay_position_after(app, conn, settings, p, sid, clock)
        wait_until(lambda: projector.poll_once() >= 0 and watermark(conn, "sessions") >= second,
                   30, "the heartbeat after the stall to be applied")
        assert projector._consumer is consumer, "the projector started over with a new consumer"
    finally:
        projector.close()


def relay_position_after(
    app: LiveApplication, conn: psycopg.Connection[Any], settings: Settings,
    p: Principal, sid: str, clock: Clock,
) -> int:
    """A heartbeat's position, once the relay has published it."""
    clock.advance(1)
    position = app.heartbeat(p, sid, clock).position
    assert position is not None
    wait_until(lambda: relay_position(conn, settings.kafka_topic) >= position,
               what="the relay to publish the heartbeat")
    return position


def as_records(
    app: LiveApplication, owner: Principal, sid: str
) -> tuple[list[Message], list[int]]:
    """The session's events as the relay publishes them to one partition (each message
    names the position of the one before it), and their positions."""
    stored = [n for n in app.recorder.select_notifications(0, 100_000)
              if str(n.originator_id) == sid]
    records, previous = [], 0
    for offset, n in enumerate(stored):
        envelope = to_envelope(n, app.mapper.to_domain_event(n),
                               (owner.tenant_id, owner.user_id))
        records.append(Message(
            topic="t", partition=0, offset=offset, key=sid.encode(), value=encode(envelope),
            headers=[(PREVIOUS_HEADER, b"%d" % previous)]))
        previous = n.id
    return records, [n.id for n in stored]


def test_a_batch_that_reached_a_recreated_topic_first_claims_nothing(
    settings: Settings, app: LiveApplication, conn: psycopg.Connection[Any]
) -> None:
    """A broker that lost its storage while the relay's producer held a batch: the batch
    reaches the recreated topic ahead of everything before it, which the relay then
    publishes again. The projector applies the batch's events by version (none here: their
    session has no row yet), and the watermark must not claim the events before them."""
    p, clock = user(), Clock()
    sid = body(app.start_session(p, "voice", clock))["session_id"]
    for _ in range(4):
        clock.advance(1)
        app.heartbeat(p, sid, clock)
    records, positions = as_records(app, p, sid)
    assert len(records) == 5
    stale, republished = records[3:], records
    projector = Projector(settings, "sessions", group_id=f"x.{secrets.token_hex(4)}")

    def applied_up_to_watermark() -> int:
        mark = watermark(conn, "sessions")
        row = session_row(conn, p.tenant_id, p.user_id, sid)
        below = conn.execute(
            "SELECT count(*) FROM xentree_live_events "
            "WHERE originator_id = %s AND notification_id <= %s", (UUID(sid), mark),
        ).fetchone()
        assert below is not None
        assert (row["version"] if row else 0) >= below[0], "the watermark claims a hole"
        return mark

    try:
        projector.apply_records({0: stale})
        assert session_row(conn, p.tenant_id, p.user_id, sid) is None
        assert applied_up_to_watermark() == 0
        projector.apply_records({0: republished[:2]})
        assert applied_up_to_watermark() == positions[1]
        projector.apply_records({0: republished[2:]})
        row = session_row(conn, p.tenant_id, p.user_id, sid)
        assert row is not None and row["version"] == 5 and row["session_seconds"] == 4
        assert applied_up_to_watermark() == positions[-1]
    finally:
        projector.close()
