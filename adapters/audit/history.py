"""The stored history as CloudEvents envelopes (the same shape the relay publishes to
Kafka), read in position order on one connection, so a caller in a REPEATABLE READ
transaction sees one consistent snapshot."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import Mapper, Notification
from psycopg.rows import tuple_row

from adapters.eventstore.history import EVENTS_TABLE
from adapters.relay.envelope import Envelope, Owners, to_envelope
from domain.errors import NotFound

BATCH = 2000

_SELECT = (
    "SELECT notification_id, originator_id, originator_version, topic, state "  # noqa: S608
    f"FROM {EVENTS_TABLE} WHERE notification_id > %s AND notification_id <= %s "
    "ORDER BY notification_id LIMIT %s"
)
_HEAD = f"SELECT coalesce(max(notification_id), 0) FROM {EVENTS_TABLE}"  # noqa: S608
_FIRST = (
    "SELECT notification_id, originator_id, originator_version, topic, state "  # noqa: S608
    f"FROM {EVENTS_TABLE} WHERE originator_id = %s AND originator_version = 1"
)


@dataclass(frozen=True)
class Selection:
    """Which events: owner and event-time bounds (inclusive), all optional."""

    tenant: str | None = None
    user: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, envelope: Envelope) -> bool:
        return (
            self.owns(envelope)
            and (self.since is None or envelope.time >= self.since)
            and (self.until is None or envelope.time <= self.until)
        )

    def owns(self, envelope: Envelope) -> bool:
        """The owner bounds alone: whether the event is of the tenant and user asked for."""
        return (self.tenant is None or envelope.tenantid == self.tenant) and (
            self.user is None or envelope.userid == self.user
        )


class UnknownOwner(NotFound):
    """The whole history holds no event of the tenant (and user) asked for: most likely a
    mistyped id, which must not read as "nothing happened"."""

    def __init__(self, tenant: str | None, user: str | None) -> None:
        named = [f"user {user!r}"] if user is not None else []
        if tenant is not None:
            named.append(f"tenant {tenant!r}")
        owner = " of ".join(named)
        super().__init__(owner)
        self.args = (f"the event history holds no event of {owner}",)


def head(conn: psycopg.Connection[Any]) -> int:
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(_HEAD).fetchone()
    return int(row[0]) if row else 0


class History:
    """Envelopes from the event table, decoded with the application's mapper."""

    def __init__(self, conn: psycopg.Connection[Any], mapper: Mapper[UUID]) -> None:
        self._conn = conn
        self._mapper = mapper
        self._owners = Owners(self._first_event)

    def envelopes(self, after: int = 0, upto: int | None = None) -> Iterator[Envelope]:
        """Every event after position `after` up to `upto` (default: the head now)."""
        stop = head(self._conn) if upto is None else upto
        position = after
        while position < stop:
            with self._conn.cursor(row_factory=tuple_row) as cur:
                rows = cur.execute(_SELECT, (position, stop, BATCH)).fetchall()
            if not rows:
                return
            for row in rows:
                yield self._envelope(_notification(row))
            position = int(rows[-1][0])

    def select(
        self, selection: Selection, after: int = 0, limit: int = 1000, scan: int | None = None
    ) -> tuple[list[Envelope], int]:
        """Up to `limit` matching envelopes after `after`, looking at no more than `scan`
        events; also the position to continue after (the last one looked at)."""
        found: list[Envelope] = []
        last, looked = after, 0
        for envelope in self.envelopes(after):
            last, looked = envelope.position, looked + 1
            if selection.matches(envelope):
                found.append(envelope)
                if len(found) >= limit:
                    break
            if scan is not None and looked >= scan:
                break
        return found, last

    def _envelope(self, notification: Notification) -> Envelope:
        event = self._mapper.to_domain_event(notification)
        owner = self._owners.resolve(
            notification.originator_id, notification.originator_version, event
        )
        return to_envelope(notification, event, owner)

    def _first_event(self, originator_id: UUID | str) -> object | None:
        with self._conn.cursor(row_factory=tuple_row) as cur:
            row = cur.execute(_FIRST, (originator_id,)).fetchone()
        return self._mapper.to_domain_event(_notification(row)) if row else None


def _notification(row: tuple[Any, ...]) -> Notification:
    position, originator_id, version, topic, state = row
    return Notification(
        originator_id=originator_id,
        originator_version=version,
        topic=topic,
        state=bytes(state),
        id=position,
    )
