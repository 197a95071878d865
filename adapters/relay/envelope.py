"""The Kafka wire format: one CloudEvents 1.0 JSON envelope per stored domain event.

`id` is the aggregate id and version, so a republished event keeps its id and consumers
can dedupe on it. `data` carries the event's own fields as plain JSON, never secrets.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.persistence import Notification

SOURCE = "xentree-live"
TYPE_PREFIX = "xentree.live."

# Envelope attributes, not event data; `originator_topic` only names the aggregate class.
_NOT_DATA = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic"})
# Never leaves the database: a key's hash would let anyone holding the stream brute-force it.
_SECRETS = frozenset({"key_hash"})


class Envelope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Only the optional extensions have defaults, so only they are left out when unset."""

    specversion: str
    id: str
    source: str
    type: str
    subject: str
    time: datetime
    position: int
    aggregatetype: str
    aggregateversion: int
    datacontenttype: str
    data: dict[str, Any]
    tenantid: str | None = None
    userid: str | None = None


Owner = tuple[str | None, str | None]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Envelope)


def encode(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode(payload: bytes) -> Envelope:
    return _decoder.decode(payload)


def split_topic(topic: str) -> tuple[str, str]:
    """`domain.session:LiveSession.Started` -> (`LiveSession`, `Started`)."""
    qualname = topic.rpartition(":")[2]
    aggregate, _, event = qualname.rpartition(".")
    return aggregate, event


def event_data(event: object) -> dict[str, Any]:
    fields = {
        k: v for k, v in vars(event).items() if k not in _NOT_DATA and k not in _SECRETS
    }
    data: dict[str, Any] = msgspec.to_builtins(fields)
    return data


def owner_of(event: object) -> Owner:
    return getattr(event, "tenant_id", None), getattr(event, "user_id", None)


def to_envelope(notification: Notification, event: object, owner: Owner) -> Envelope:
    aggregate, name = split_topic(notification.topic)
    timestamp: datetime = getattr(event, "timestamp")  # noqa: B009 - not on `object`
    tenant_id, user_id = owner
    return Envelope(
        specversion="1.0",
        id=f"{notification.originator_id}:{notification.originator_version}",
        source=SOURCE,
        type=f"{TYPE_PREFIX}{aggregate}.{name}",
        subject=str(notification.originator_id),
        time=timestamp.astimezone(UTC),
        position=notification.id,
        aggregatetype=aggregate,
        aggregateversion=notification.originator_version,
        datacontenttype="application/json",
        data=event_data(event),
        tenantid=tenant_id,
        userid=user_id,
    )


class Owners:
    """Tenant and user of each aggregate, which only its first event carries.

    Later events (Billed, Ended, ...) are resolved through `first_event`, with an LRU cache
    so a busy session costs one lookup, not one per heartbeat."""

    def __init__(
        self, first_event: Callable[[UUID | str], object | None], size: int = 10_000
    ) -> None:
        self._first_event = first_event
        self._size = size
        self._cache: OrderedDict[UUID | str, Owner] = OrderedDict()

    def resolve(self, originator_id: UUID | str, version: int, event: object) -> Owner:
        if version == 1:
            owner = owner_of(event)
        elif originator_id in self._cache:
            self._cache.move_to_end(originator_id)
            return self._cache[originator_id]
        else:
            first = self._first_event(originator_id)
            owner = owner_of(first) if first is not None else (None, None)
        self._cache[originator_id] = owner
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return owner
