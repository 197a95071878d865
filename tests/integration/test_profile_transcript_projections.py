"""The profile and transcripts projections, and the live append path, on real PostgreSQL
and Tansu: rows equal the aggregates, and redelivery applies nothing twice."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID

import msgspec
import psycopg
import pytest
from psycopg.rows import dict_row

from adapters.bootstrap import build_application
from adapters.eventstore.schema import migrate
from adapters.projector.runner import Projector, projection_watermark
from adapters.readmodels import profile_row, transcript_row, transcript_rows
from adapters.relay.relay import Relay
from application.live import LiveApplication
from application.principal import Principal
from application.settings import Settings
from domain.account import Account
from domain.errors import NotFound
from domain.ids import account_id
from domain.transcript import RawEntry, Transcript, format_timestamp
from tests.support.clock import Clock
from tests.support.waiting import running, wait_until

NAMES = ("profile", "transcripts")


@pytest.fixture
def settings(database_url: str, kafka_bootstrap: str, fresh_topic: str) -> Settings:
    s = Settings(
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic=fresh_topic,
        relay_poll_seconds=0.2,
    )
    migrate(s)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM rm_profile; DELETE FROM rm_transcripts;")
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


class Running:
    def __init__(self, settings: Settings) -> None:
        group = secrets.token_hex(4)
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(
                target=Projector(settings, n, group_id=f"xentree-live.{n}.{group}").run_forever,
                args=(self.stop,),
                daemon=True,
            )
            for n in NAMES
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


def line(clock: Clock, role: str, text: str) -> RawEntry:
    return RawEntry(role=role, text=text, timestamp=format_timestamp(clock()))


def caught_up(conn: psycopg.Connection[Any], position: int) -> bool:
    return all(projection_watermark(conn, name) >= position for name in NAMES)


def head(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT coalesce(max(notification_id), 0) FROM xentree_live_events")
    return int(row.fetchone()[0])  # type: ignore[index]


def snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[dict[str, Any]]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return {
            "profile": cur.execute("SELECT * FROM rm_profile ORDER BY account_id").fetchall(),
            "transcripts": cur.execute(
                "SELECT * FROM rm_transcripts ORDER BY transcript_id"
            ).fetchall(),
        }


def activity(app: LiveApplication) -> tuple[Principal, list[str], str, int]:
    """A nickname, a posted transcript, and a live session recorded line by line."""
    p, clock = user(), Clock()
    app.set_nickname(p, " Ana ")
    app.set_nickname(p, "Bea")
    stored = body(app.submit_transcript(
        p, "2026-04-16T10:00:00Z", "2026-04-16T10:05:00Z",
        [RawEntry(role="user", text=f"hello {i}", timestamp=f"2026-04-16T10:00:{i:02d}Z")
         for i in range(60)],
        None, clock,
    ))
    sid = body(app.start_session(p, "voice", clock))["session_id"]
    clock.advance(1)
    app.append_lines(UUID(sid), [line(clock, "user", "Hi there")], clock)
    clock.advance(1)
    app.append_lines(UUID(sid), [line(clock, "ai", "Hello!")], clock)
    clock.advance(2)
    app.end_session(p, sid, "client", clock)
    answer = app.finalise_transcript(
        UUID(sid), "client", clock, cut_off=line(clock, "ai", "As I was say")
    )
    assert answer.position is not None
    return p, [stored["transcript_id"], str(Transcript.live_id(sid))], sid, answer.position


def test_rows_equal_the_aggregates(
    settings: Settings, app: LiveApplication, relay: Relay, conn: psycopg.Connection[Any]
) -> None:
    p, ids, sid, last = activity(app)
    with Running(settings):
        wait_until(lambda: caught_up(conn, last), 30, "the projections to catch up")
    account = app.repository.get(account_id(p.tenant_id, p.user_id))
    assert isinstance(account, Account)
    row = profile_row(conn, p.tenant_id, p.user_id)
    assert row is not None
    assert (row["nickname"], row["version"]) == (account.nickname, account.version)
    assert row["nickname"] == "Bea"
    for tid in ids:
        agg = app.repository.get(UUID(tid))
        assert isinstance(agg, Transcript)
        trow = transcript_row(conn, p.tenant_id, p.user_id, tid)
        assert trow is not None
        assert msgspec.json.decode(trow["entries"]) == agg.entries
        assert (trow["entry_count"], trow["ended_at"], trow["end_reason"], trow["status"]) == (
            len(agg.entries), agg.ended_at, agg.end_reason, "complete"
        )
        assert trow["started_at"] == agg.started_at
        assert transcript_row(conn, "another-tenant", p.user_id, tid) is None
    live = transcript_row(conn, p.tenant_id, p.user_id, ids[1])
    assert live is not None and live["session_id"] == sid
    entries = msgspec.json.decode(live["entries"])
    assert [(e["role"], e["text"], e["interrupted"]) for e in entries] == [
        ("user", "Hi there", False), ("ai", "Hello!", False), ("ai", "As I was say", True)
    ]
    listed = transcript_rows(conn, p.tenant_id, p.user_id, 10)
    assert {str(r["transcript_id"]) for r in listed} == set(ids)
    assert transcript_rows(conn, p.tenant_id, p.user_id, 10, session_id=sid)[0][
        "transcript_id"
    ] == UUID(ids[1])


def test_redelivery_and_rebuild_give_the_same_rows(
    settings: Settings, app: LiveApplication, relay: Relay, conn: psycopg.Connection[Any]
) -> None:
    *_, last = activity(app)
    with Running(settings):
        wait_until(lambda: caught_up(conn, last), 30, "the projections to catch up")
    live = snapshot(conn)
    assert live["profile"] and len(live["transcripts"]) >= 2

    conn.execute("DELETE FROM projection_partitions")
    with Running(settings):
        wait_until(lambda: caught_up(conn, head(conn)), 30, "the re-consumption")
    assert snapshot(conn) == live

    conn.execute("DELETE FROM rm_profile; DELETE FROM rm_transcripts; "
                 "DELETE FROM projection_partitions")
    with Running(settings):
        wait_until(lambda: caught_up(conn, head(conn)), 30, "the rebuild")
    assert snapshot(conn) == live


def test_the_append_path(app: LiveApplication) -> None:
    p, clock = user(), Clock()
    with pytest.raises(NotFound):
        app.append_lines(UUID(int=7), [line(clock, "user", "nobody")], clock)
    sid = UUID(body(app.start_session(p, "avatar", clock))["session_id"])
    for i in range(3):
        clock.advance(timedelta(seconds=1).total_seconds())
        answer = app.append_lines(sid, [line(clock, "user", f"line {i}")], clock)
        assert body(answer)["entry_count"] == i + 1 and answer.position is not None
    first = app.finalise_transcript(sid, "idle_timeout", clock)
    again = app.finalise_transcript(sid, "client", clock)
    # The second wrote nothing: it stands where the first left the transcript.
    assert first.position is not None and again.position == first.position
    transcript = app.repository.get(Transcript.live_id(sid))
    assert isinstance(transcript, Transcript)
    assert transcript.end_reason == "idle_timeout" and len(transcript.entries) == 3
    assert transcript.owned_by(p.tenant_id, p.user_id)
