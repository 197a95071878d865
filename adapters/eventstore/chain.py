"""The tamper-evident hash chain over the event history, in commit order.

Each stored event at notification position p gets one link:

    link(p) = SHA-256(link(previous position) || digest(event))
    digest  = SHA-256("xentree-live/event-chain/v1" || len-prefixed parts)

with the parts position (8 bytes, big-endian), aggregate id (text), version (8 bytes),
topic (the event type), timestamp (ISO 8601, as stored) and the stored payload bytes. The
first link chains from 32 zero bytes. Links are written by the append function
(adapters/eventstore/append.py, the same digest in SQL) in the insert transaction, while
its lock serialises writers, so link order is commit order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import psycopg
from psycopg.rows import tuple_row

from adapters.eventstore.history import CHAIN_TABLE, EVENTS_TABLE

GENESIS = bytes(32)
_TAG = b"xentree-live/event-chain/v1"

class _Stamped(msgspec.Struct):
    timestamp: Any = None


_stamp_decoder = msgspec.json.Decoder(_Stamped)


def stored_timestamp(state: bytes) -> str:
    """The event's timestamp as the JSON transcoder stored it ({"_data_": iso})."""
    try:
        stamp = _stamp_decoder.decode(state).timestamp
    except (msgspec.DecodeError, UnicodeDecodeError):
        return ""
    if isinstance(stamp, dict):
        return str(stamp.get("_data_", ""))
    return "" if stamp is None else str(stamp)


def event_digest(
    position: int, originator_id: object, version: int, topic: str, state: bytes
) -> bytes:
    h = hashlib.sha256(_TAG)
    for part in (
        position.to_bytes(8, "big"),
        str(originator_id).encode(),
        version.to_bytes(8, "big"),
        topic.encode(),
        stored_timestamp(state).encode(),
        state,
    ):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


def link(previous: bytes, digest: bytes) -> bytes:
    return hashlib.sha256(previous + digest).digest()


# ---- verification ---------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    ok: bool
    position: int  # the last position verified intact (0: none)
    head: bytes  # the link at `position`
    events: int
    broken_at: int | None = None
    reason: str = ""


_WALK = (
    "SELECT coalesce(e.notification_id, c.position), e.notification_id, e.originator_id, "  # noqa: S608
    "e.originator_version, e.topic, e.state, c.hash "
    f"FROM {EVENTS_TABLE} e FULL OUTER JOIN {CHAIN_TABLE} c ON c.position = e.notification_id "
    "ORDER BY 1"
)


def _rows(conn: psycopg.Connection[Any]) -> Iterator[tuple[Any, ...]]:
    with conn.cursor(name="xentree_chain_walk", row_factory=tuple_row) as cur:
        cur.itersize = 2000
        cur.execute(_WALK)
        yield from cur


def walk(
    rows: Iterable[tuple[Any, ...]], checkpoint: int | None = None
) -> tuple[Verdict, bytes | None]:
    """Recompute the chain over `rows` (position, event columns..., stored link); stop at
    the first broken position. Also the recomputed link at `checkpoint`, if reached."""
    previous, last, count, at_checkpoint = GENESIS, 0, 0, None
    for position, event_position, originator_id, version, topic, state, stored in rows:
        if event_position is None:
            return Verdict(False, last, previous, count, position,
                           "a chain link without its event: the event was removed"), at_checkpoint
        if stored is None:
            return Verdict(False, last, previous, count, position,
                           "an event without a chain link: inserted out of band"), at_checkpoint
        current = link(previous, event_digest(position, originator_id, version, topic,
                                              bytes(state)))
        if current != bytes(stored):
            return Verdict(False, last, previous, count, position,
                           "the event or its link was altered"), at_checkpoint
        previous, last, count = current, position, count + 1
        if position == checkpoint:
            at_checkpoint = current
    return Verdict(True, last, previous, count), at_checkpoint


def verify(
    conn: psycopg.Connection[Any], checkpoint: int | None = None
) -> tuple[Verdict, bytes | None]:
    """Walk the whole history in one snapshot (concurrent writers cannot confuse it)."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        return walk(_rows(conn), checkpoint)


def backfill(conn: psycopg.Connection[Any]) -> int:
    """Chain events stored before the chain existed (run by `migrate`, under the write
    lock). Only a chain that is empty is backfilled: anything else unchained is exactly
    what `verify` must report."""
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(f"LOCK TABLE {EVENTS_TABLE} IN EXCLUSIVE MODE")
        if cur.execute(f"SELECT EXISTS (SELECT FROM {CHAIN_TABLE})").fetchone() != (False,):  # noqa: S608
            return 0
        rows = cur.execute(
            f"SELECT notification_id, originator_id, originator_version, topic, state "  # noqa: S608
            f"FROM {EVENTS_TABLE} ORDER BY notification_id"
        ).fetchall()
        previous, links = GENESIS, []
        for position, originator_id, version, topic, state in rows:
            previous = link(previous, event_digest(position, originator_id, version, topic,
                                                   bytes(state)))
            links.append((position, previous))
        cur.executemany(f"INSERT INTO {CHAIN_TABLE} (position, hash) VALUES (%s, %s)", links)  # noqa: S608
    return len(links)
