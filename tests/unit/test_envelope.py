"""The Kafka wire format: CloudEvents 1.0 envelopes of stored domain events."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from uuid import uuid4

from eventsourcing.persistence import Notification
from eventsourcing.utils import get_topic

from adapters.relay.envelope import Owners, decode, encode, split_topic, to_envelope
from domain.api_key import ApiKey
from domain.session import LiveSession

STARTED_AT = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


def new_session() -> LiveSession:
    return LiveSession(
        tenant_id="tenant-a",
        user_id="user-1",
        session_type="voice",
        started_at=STARTED_AT,
        ledger_id=uuid4(),
        max_session_seconds=3600,
        idle_timeout_seconds=60,
        credential="bearer",
        credential_id=None,
    )


def notification(event: object, position: int) -> Notification:
    return Notification(
        id=position,
        originator_id=event.originator_id,  # type: ignore[attr-defined]
        originator_version=event.originator_version,  # type: ignore[attr-defined]
        topic=get_topic(type(event)),
        state=b"",
    )


def test_split_topic() -> None:
    assert split_topic("domain.session:LiveSession.Started") == ("LiveSession", "Started")


def test_started_event_becomes_a_cloudevent() -> None:
    session = new_session()
    (started,) = session.collect_events()
    envelope = to_envelope(notification(started, 41), started, ("tenant-a", "user-1"))
    wire = json.loads(encode(envelope))
    assert wire["specversion"] == "1.0"
    assert wire["id"] == f"{session.id}:1"
    assert wire["source"] == "xentree-live"
    assert wire["type"] == "xentree.live.LiveSession.Started"
    assert wire["subject"] == str(session.id)
    assert wire["datacontenttype"] == "application/json"
    assert wire["time"].endswith("Z")
    assert (wire["tenantid"], wire["userid"]) == ("tenant-a", "user-1")
    assert (wire["position"], wire["aggregatetype"], wire["aggregateversion"]) == (
        41, "LiveSession", 1
    )
    data = wire["data"]
    assert data["started_at"] == "2026-11-10T12:00:00Z"
    assert data["ledger_id"] == str(session.ledger_id)
    assert data["session_type"] == "voice"
    for attribute in ("originator_id", "originator_version", "timestamp", "originator_topic"):
        assert attribute not in data
    assert decode(encode(envelope)) == envelope


def test_key_hash_never_leaves() -> None:
    key = ApiKey(
        key_id="k1",
        tenant_id="tenant-a",
        user_id="user-1",
        key_hash="secret-hash",
        scopes=["live:read"],
        name="laptop",
        issued_at=STARTED_AT,
    )
    (issued,) = key.collect_events()
    payload = encode(to_envelope(notification(issued, 1), issued, ("tenant-a", "user-1")))
    assert b"secret-hash" not in payload and b"key_hash" not in payload
    assert json.loads(payload)["data"]["scopes"] == ["live:read"]


def test_later_events_take_the_owner_of_the_first_with_one_lookup() -> None:
    session = new_session()
    session._billed(seconds=5, bill_point=STARTED_AT, at=STARTED_AT)
    session._billed(seconds=5, bill_point=STARTED_AT, at=STARTED_AT)
    started, *billed = session.collect_events()
    lookups: list[object] = []

    def first_event(originator_id: object) -> object:
        lookups.append(originator_id)
        return started

    owners = Owners(first_event)
    for event in billed:
        assert owners.resolve(session.id, event.originator_version, event) == (
            "tenant-a", "user-1"
        )
    assert lookups == [session.id]
    envelope = to_envelope(notification(billed[0], 2), billed[0], ("tenant-a", "user-1"))
    assert envelope.type == "xentree.live.LiveSession.Billed"
    assert envelope.id == f"{session.id}:2"
    assert envelope.data == {
        "seconds": 5, "bill_point": "2026-11-10T12:00:00Z", "at": "2026-11-10T12:00:00Z"
    }


def test_the_cache_is_bounded() -> None:
    owners = Owners(lambda _id: None, size=2)
    ids = [uuid4() for _ in range(3)]
    for i in ids:
        owners.resolve(i, 2, object())
    assert ids[0] not in owners._cache and len(owners._cache) == 2
