"""Events stored in an old shape load through their upcasts, on real PostgreSQL.

`LiveSession.Billed` v1 had no `at` (the heartbeat's moment): a v1 row upcasts with
`at = bill_point`, so the session loads and keeps billing and timing out as before."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID

import msgspec
import pytest
from eventsourcing.persistence import Mapper, StoredEvent

from adapters.bootstrap import build_application
from adapters.eventstore.schema import migrate
from application.live import LiveApplication
from application.principal import Principal
from application.settings import PlanDefaults, Settings
from domain.billing import Bill
from domain.session import LiveSession
from tests.support.clock import Clock


@pytest.fixture(scope="module")
def settings(database_url: str) -> Settings:
    s = Settings(
        database_url=database_url,
        plans=PlanDefaults(free_seconds=100, max_session_seconds=3600),
    )
    migrate(s)
    return s


@pytest.fixture
def app(settings: Settings) -> Iterator[LiveApplication]:
    a = build_application(settings)
    yield a
    a.close()


def user() -> Principal:
    return Principal(
        tenant_id=f"t-{secrets.token_hex(4)}",
        user_id=f"u-{secrets.token_hex(4)}",
        scopes=frozenset({"live:read", "live:write"}),
        credential="bearer",
    )


def decode_state(mapper: Mapper[Any], state: bytes) -> dict[str, Any]:
    if mapper.cipher:
        state = mapper.cipher.decrypt(state)
    if mapper.compressor:
        state = mapper.compressor.decompress(state)
    decoded: dict[str, Any] = mapper.transcoder.decode(state)
    return decoded


def encode_state(mapper: Mapper[Any], state: dict[str, Any]) -> bytes:
    encoded = mapper.transcoder.encode(state)
    if mapper.compressor:
        encoded = mapper.compressor.compress(encoded)
    if mapper.cipher:
        encoded = mapper.cipher.encrypt(encoded)
    return encoded


def as_v1(mapper: Mapper[Any], stored: StoredEvent) -> StoredEvent:
    """The row exactly as the code before `at` stored it: no `at`, no `class_version`."""
    state = decode_state(mapper, stored.state)
    assert state.pop("class_version") == 2
    del state["at"]
    return StoredEvent(
        originator_id=stored.originator_id,
        originator_version=stored.originator_version,
        topic=stored.topic,
        state=encode_state(mapper, state),
    )


def test_a_v1_billed_row_loads_with_at_equal_to_its_bill_point(app: LiveApplication) -> None:
    p, clock = user(), Clock()
    started_at = clock()
    sid = msgspec.json.decode(app.start_session(p, "voice", clock).body)["session_id"]
    session_id = UUID(sid)

    # An old heartbeat 10.6 s in: 10 s billed up to started_at + 10, stored as v1.
    session = app.repository.get(session_id)
    assert isinstance(session, LiveSession)
    bill_point = started_at + timedelta(seconds=10)
    session.apply_bill(Bill(seconds=10, bill_point=bill_point), seen_at=clock.advance(10.6))
    [billed] = session.collect_events()
    assert isinstance(billed, LiveSession.Billed)
    v1 = as_v1(app.mapper, app.mapper.to_stored_event(billed))
    app.recorder.insert_events([v1])

    [row] = app.recorder.select_events(session_id, gt=1)
    assert row.topic == "domain.session:LiveSession.Billed"
    stored_state = decode_state(app.mapper, row.state)
    assert "at" not in stored_state and "class_version" not in stored_state

    # It loads: the old heartbeat's moment is its bill point.
    loaded = app.repository.get(session_id)
    assert isinstance(loaded, LiveSession)
    assert loaded.version == 2
    assert loaded.session_seconds == 10
    assert loaded.bill_point == bill_point
    assert loaded.last_seen == bill_point

    # Heartbeats continue from there: 5.5 s on, 5 more whole seconds (the 0.6 s carried
    # over from the old heartbeat plus 5.5 s is 6.1 s after the bill point -> 6).
    clock.advance(5.5)
    hb = msgspec.json.decode(app.heartbeat(p, sid, clock).body)
    assert (hb["billed_seconds"], hb["session_seconds"]) == (6, 16)
    after = app.repository.get(session_id)
    assert isinstance(after, LiveSession)
    assert after.version == 3
    assert after.bill_point == bill_point + timedelta(seconds=6)
    assert after.last_seen == clock()
    # The new heartbeat is stored as v2, with its `at`.
    [new_row] = app.recorder.select_events(session_id, gt=2)
    new_state = decode_state(app.mapper, new_row.state)
    assert new_state["class_version"] == 2 and "at" in new_state


def test_the_idle_window_of_a_v1_row_runs_from_its_bill_point(app: LiveApplication) -> None:
    p, clock = user(), Clock()
    started_at = clock()
    sid = msgspec.json.decode(app.start_session(p, "voice", clock).body)["session_id"]
    session = app.repository.get(UUID(sid))
    assert isinstance(session, LiveSession)
    bill_point = started_at + timedelta(seconds=20)
    session.apply_bill(Bill(seconds=20, bill_point=bill_point), seen_at=clock.advance(20.9))
    [billed] = session.collect_events()
    app.recorder.insert_events([as_v1(app.mapper, app.mapper.to_stored_event(billed))])

    # The idle window runs from the bill point (the v1 row's only moment): still live
    # just before it closes, ended idle once it has.
    loaded = app.repository.get(UUID(sid))
    assert isinstance(loaded, LiveSession)
    idle = loaded.idle_timeout_seconds
    assert loaded.decide_reap(bill_point + timedelta(seconds=idle - 0.5), 1000) is None
    decision = loaded.decide_reap(bill_point + timedelta(seconds=idle), 1000)
    assert decision is not None and decision.end_reason == "idle_timeout"
    assert decision.seconds == 0 and decision.ended_at == bill_point


def test_a_v1_ended_row_loads_and_its_end_answer_reads_the_ledger(app: LiveApplication) -> None:
    """`LiveSession.Ended` v1 had no `remaining_seconds`: such a session loads, and its
    (repeated) end answer takes the remaining quota from the ledger."""
    p, clock = user(), Clock()
    sid = msgspec.json.decode(app.start_session(p, "voice", clock).body)["session_id"]
    session = app.repository.get(UUID(sid))
    assert isinstance(session, LiveSession)
    clock.advance(7.2)
    session.end("client", clock(), 100)
    billed, ended = session.collect_events()
    assert isinstance(ended, LiveSession.Ended) and ended.remaining_seconds == 93
    state = decode_state(app.mapper, app.mapper.to_stored_event(ended).state)
    assert state.pop("class_version") == 2
    del state["remaining_seconds"]
    stored = app.mapper.to_stored_event(ended)
    app.recorder.insert_events([
        app.mapper.to_stored_event(billed),
        StoredEvent(
            originator_id=stored.originator_id,
            originator_version=stored.originator_version,
            topic=stored.topic,
            state=encode_state(app.mapper, state),
        ),
    ])
    loaded = app.repository.get(UUID(sid))
    assert isinstance(loaded, LiveSession)
    assert loaded.end_reason == "client" and loaded.remaining_at_end is None
    # The ledger never heard of this end (the rows went in behind the application's
    # back), so it still holds the whole quota: that is what the answer reports.
    answer = msgspec.json.decode(app.end_session(p, sid, "client", clock).body)
    assert answer["end_reason"] == "client" and answer["remaining_seconds"] == 100


def test_a_v2_ended_session_answers_the_quota_left_at_its_end(app: LiveApplication) -> None:
    p, clock = user(), Clock()
    sid = msgspec.json.decode(app.start_session(p, "voice", clock).body)["session_id"]
    clock.advance(5.5)
    first = msgspec.json.decode(app.end_session(p, sid, "client", clock).body)
    assert first["remaining_seconds"] == 95
    # Another session spends more of the quota; the first one's end answer stands.
    other = msgspec.json.decode(app.start_session(p, "voice", clock).body)["session_id"]
    clock.advance(10)
    app.end_session(p, other, "client", clock)
    again = msgspec.json.decode(app.end_session(p, sid, "client", clock).body)
    assert again == first
