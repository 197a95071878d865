"""The quota read model kept in the API process's memory, coherent with PostgreSQL.

`GET /api/live/quota` is the read clients poll. Each answer from PostgreSQL costs a round
trip and a pool checkout; from memory it costs a dictionary lookup. Coherence comes from
the projector: every transaction that changes quota rows or moves the quota watermark ends
with a NOTIFY naming the ledgers it changed and the watermark after it, and a rebuild that
swaps the table in says so (adapters/projector/notices.py).
PostgreSQL delivers notifications in commit order once committed, so when the cache has
heard a watermark M it has heard of every change at or below M:

- an entry fetched from PostgreSQL at watermark E and not named since is the row as of
  max(E, M) — its `as_of`;
- an entry is stored only when no notification arrived while it was being fetched;
- the cache raises M from notifications only, never from its own reads;
- a row answered from memory since it was kept, when a notification names it, is fetched
  again at once by the cache itself (by the same rule), so a client polling its quota
  while its session heartbeats is answered from memory, not after a round trip.

While it is not listening (before its first LISTEN, or after the connection broke, when
notifications may have been missed) it holds nothing and every read goes to PostgreSQL,
as before; on reconnecting it starts empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
import psycopg
from psycopg.rows import dict_row

from adapters.projector.notices import CHANNEL, Announcement, decode_announcement
from adapters.readmodels import async_watermark
from domain.ids import ledger_id

log = logging.getLogger(__name__)

RECONNECT_SECONDS = (0.1, 0.5, 1.0, 2.0)
CAPACITY = 100_000
REFRESH_TRIES = 3
APPLICATION_NAME = "xentree-live quota cache"

Row = dict[str, Any] | None
Fetch = Callable[[], Awaitable[tuple[int, Row]]]
# A user's period: (tenant_id, user_id, period_start). Notifications name its ledger's id.
Key = tuple[str, str, datetime]


class QuotaCache:
    def __init__(self, conninfo: str, capacity: int = CAPACITY) -> None:
        self._conninfo = conninfo
        self._capacity = capacity
        self._entries: dict[Key, tuple[Row, int]] = {}
        self._keys: dict[UUID, Key] = {}  # ledger id → the entry's key
        self._listening = False
        self._mark = 0  # the highest watermark announced
        # Changes heard per key being kept or read, and an epoch that moves whenever the
        # cache starts over (a flush, a reconnect, a full cache): a read keeps what it
        # fetched only if neither moved for its key while it was fetching.
        self._changes: dict[Key, int] = {}
        self._epoch = 0
        self._moved = asyncio.Event()  # set and replaced whenever the mark rises
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        # Rows answered from memory since they were kept: when a notification names one,
        # it is fetched again at once, off any request's path, so the client polling it
        # is answered from memory next time too (a row nobody asked for again is not).
        self._hot: dict[Key, Fetch] = {}
        self._refreshing: dict[Key, asyncio.Task[None]] = {}

    @property
    def listening(self) -> bool:
        return self._listening

    @property
    def mark(self) -> int:
        return self._mark

    def __len__(self) -> int:
        return len(self._entries)

    async def start(self) -> None:
        """Begin listening (from the API's event loop); waits briefly for the first LISTEN
        so that the first requests are already answered from memory."""
        self._task = asyncio.create_task(self._listen())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), 5)

    async def stop(self) -> None:
        for task in list(self._refreshing.values()):
            task.cancel()
        self._refreshing.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_for(self, position: int, timeout: float) -> bool:
        """Whether the announced watermark reached `position` within `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._mark < position and self._listening:
            left = deadline - loop.time()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._moved.wait(), left)
        return self._mark >= position

    async def read(self, key: Key, fetch: Fetch) -> tuple[int, Row]:
        """The quota row of a user's period and the watermark it is known at: from memory,
        or fetched (and kept when nothing changed meanwhile)."""
        found = self._entries.get(key)
        if found is not None:
            row, at = found
            if key not in self._hot:
                self._hot[key] = fetch
            return max(at, self._mark), row
        if len(self._keys) >= self._capacity:  # bounds the entries too: each has a key
            self._clear()
        self._keys[ledger_id(*key)] = key  # so that a change heard meanwhile counts
        epoch, changes, listening = self._epoch, self._changes.get(key, 0), self._listening
        mark, row = await fetch()
        if (listening and self._listening and epoch == self._epoch
                and changes == self._changes.get(key, 0)):
            self._entries[key] = (row, mark)
        return mark, row

    def _clear(self) -> None:
        """Start over: nothing kept, and no read under way may keep what it fetched."""
        self._entries.clear()
        self._keys.clear()
        self._changes.clear()
        self._hot.clear()
        self._epoch += 1

    # ---- the listener ---------------------------------------------------------------

    async def _listen(self) -> None:
        attempt = 0
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=2, row_factory=dict_row,
                    application_name=APPLICATION_NAME,
                )
            except (psycopg.Error, OSError):
                await asyncio.sleep(RECONNECT_SECONDS[min(attempt, len(RECONNECT_SECONDS) - 1)])
                attempt += 1
                continue
            try:
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    # Listening first, then the mark: nothing committed after this read
                    # goes unheard, and everything before it is in PostgreSQL.
                    self._raise_mark(await async_watermark(conn, "quota"))
                    self._listening = True
                    self._connected.set()
                    attempt = 0
                    async for notice in conn.notifies():
                        self._heard(notice.payload)
            except (psycopg.Error, OSError):
                log.warning("quota cache: lost its notification connection; reconnecting")
            finally:
                # Notifications may be missed from here on: hold nothing until listening.
                self._listening = False
                self._clear()
                self._moved.set()
            await asyncio.sleep(RECONNECT_SECONDS[min(attempt, len(RECONNECT_SECONDS) - 1)])
            attempt += 1

    def _heard(self, payload: str) -> None:
        try:
            notice = decode_announcement(payload)
        except msgspec.DecodeError:
            log.error("quota cache: unreadable notification %r; starting empty", payload[:80])
            notice = Announcement(flush=True)
        if notice.flush:
            self._clear()
            return
        for ledger in notice.keys:
            key = self._keys.get(UUID(hex=ledger))
            if key is not None:
                self._entries.pop(key, None)
                self._changes[key] = self._changes.get(key, 0) + 1
                fetch = self._hot.pop(key, None)
                if fetch is not None and key not in self._refreshing:
                    self._refreshing[key] = asyncio.create_task(self._refresh(key, fetch))
        self._raise_mark(notice.mark)

    async def _refresh(self, key: Key, fetch: Fetch) -> None:
        """Fetch a changed row again and keep it (by `read`'s rule: only if nothing changed
        it meanwhile; a few tries while it keeps changing, then the next request reads)."""
        try:
            for _ in range(REFRESH_TRIES):
                epoch = self._epoch
                await self.read(key, fetch)
                if key in self._entries or epoch != self._epoch or not self._listening:
                    return
        except Exception:  # the database went away: the next request reads, as before
            log.debug("quota cache: refreshing %s failed", key, exc_info=True)
        finally:
            self._refreshing.pop(key, None)

    def _raise_mark(self, mark: int) -> None:
        if mark > self._mark:
            self._mark = mark
            self._moved.set()
            self._moved = asyncio.Event()
