"""What the projector says when the quota read model changes: a NOTIFY on `CHANNEL`, sent
in the transaction that changed it (so PostgreSQL delivers it once committed, in commit
order), naming the ledgers changed and the quota watermark after it; or a flush when the
table was replaced wholesale. The API's quota cache (adapters/quota_cache.py) listens."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID

import msgspec
import psycopg

CHANNEL = "xentree_quota"
# PostgreSQL refuses payloads of 8000 bytes or more; a ledger id is 32 hex digits.
KEYS_PER_NOTIFY = 200


class Announcement(msgspec.Struct, omit_defaults=True):
    mark: int = 0
    keys: list[str] = []
    flush: bool = False


_encode = msgspec.json.Encoder().encode
decode_announcement = msgspec.json.Decoder(Announcement).decode


def announce(conn: psycopg.Connection[Any], mark: int, ledgers: Iterable[UUID]) -> None:
    """The quota ledgers a transaction changed and the quota watermark it leaves (a
    mark-only notice when it changed none)."""
    keys = [ledger.hex for ledger in ledgers]
    chunks = [keys[i:i + KEYS_PER_NOTIFY] for i in range(0, len(keys), KEYS_PER_NOTIFY)]
    with conn.cursor() as cur:
        for chunk in chunks or [[]]:
            payload = _encode(Announcement(mark=mark, keys=chunk)).decode()
            cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


def announce_flush(conn: psycopg.Connection[Any]) -> None:
    """Within the transaction that replaces the quota table wholesale (a rebuild)."""
    payload = _encode(Announcement(flush=True)).decode()
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
