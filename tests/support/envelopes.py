"""Relay envelopes from in-memory aggregates, for projection tests without services."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Notification
from eventsourcing.utils import get_topic

from adapters.relay.envelope import Envelope, Owners, decode, encode, to_envelope

_positions = count(1)


def envelopes_of(*aggregates: Aggregate) -> Iterator[Envelope]:
    """Each aggregate's pending events as the relay would publish them (through the wire
    format), with increasing positions."""
    firsts: dict[object, object] = {}

    def first_event(originator_id: object) -> object | None:
        return firsts.get(originator_id)

    owners = Owners(first_event)
    for aggregate in aggregates:
        for event in aggregate.collect_events():
            if event.originator_version == 1:
                firsts[event.originator_id] = event
            n = Notification(
                id=next(_positions),
                originator_id=event.originator_id,
                originator_version=event.originator_version,
                topic=get_topic(type(event)),
                state=b"",
            )
            owner = owners.resolve(n.originator_id, n.originator_version, event)
            yield decode(encode(to_envelope(n, event, owner)))
