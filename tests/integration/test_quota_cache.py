"""The API's in-memory quota rows against real PostgreSQL notifications: what is kept, what
a notification takes away, and what happens when the notification connection is lost."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from adapters.eventstore.schema import migrate
from adapters.projector.notices import announce, announce_flush
from adapters.quota_cache import APPLICATION_NAME, QuotaCache
from application.settings import Settings, parse_database_url
from domain.ids import ledger_id
from tests.support.services import scratch_database

PERIOD = datetime(2026, 12, 1, tzinfo=UTC)
ALICE = ("t-cache", "alice", PERIOD)
BOB = ("t-cache", "bob", PERIOD)


@pytest.fixture(scope="module")
def conninfo(database_url: str) -> Iterator[str]:
    with scratch_database(database_url) as url:
        migrate(Settings(database_url=url))
        yield parse_database_url(url).conninfo()


class Store:
    """What `fetch` finds in "PostgreSQL": a row per key and the watermark, counting reads;
    `gate`, when set, holds a read until released."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, datetime], dict[str, Any]] = {}
        self.mark = 0
        self.reads = 0
        self.gate: asyncio.Event | None = None
        self.fail = False

    def fetch(self, key: tuple[str, str, datetime]) -> Callable[[], Awaitable[Any]]:
        async def read() -> tuple[int, dict[str, Any] | None]:
            self.reads += 1
            if self.fail:
                raise psycopg.OperationalError("the database is away")
            row, mark = self.rows.get(key), self.mark
            if self.gate is not None:
                await self.gate.wait()
            return mark, row

        return read


def notify(conninfo: str, mark: int, *keys: tuple[str, str, datetime]) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn, conn.transaction():
        announce(conn, mark, [ledger_id(*k) for k in keys])


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_rows_are_kept_until_a_notification_names_them(conninfo: str) -> None:
    async def scenario() -> None:
        store, cache = Store(), QuotaCache(conninfo)
        await cache.start()
        try:
            assert cache.listening
            store.rows[ALICE] = {"used_seconds": 1}
            store.mark = 10
            assert await cache.read(ALICE, store.fetch(ALICE)) == (10, {"used_seconds": 1})
            assert await cache.read(BOB, store.fetch(BOB)) == (10, None)  # no row is kept too
            store.rows[ALICE] = {"used_seconds": 5}
            assert await cache.read(ALICE, store.fetch(ALICE)) == (10, {"used_seconds": 1})
            assert store.reads == 2

            # A change to Bob's ledger: Alice's row stands, at the announced watermark.
            store.rows[BOB], store.mark = {"used_seconds": 2}, 20
            await asyncio.to_thread(notify, conninfo, 20, BOB)
            await until(lambda: cache.mark == 20)
            assert await cache.read(ALICE, store.fetch(ALICE)) == (20, {"used_seconds": 1})
            assert await cache.read(BOB, store.fetch(BOB)) == (20, {"used_seconds": 2})
            assert store.reads == 3

            # Alice's: read again, at once, by the cache itself (her row was answered from
            # memory since it was kept), so her next read is from memory.
            store.mark = 30
            await asyncio.to_thread(notify, conninfo, 30, ALICE)
            await until(lambda: cache.mark == 30 and store.reads == 4 and len(cache) == 2)
            assert await cache.read(ALICE, store.fetch(ALICE)) == (30, {"used_seconds": 5})
            assert store.reads == 4

            # A rebuilt table: everything is read again.
            def flush() -> None:
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    announce_flush(conn)

            assert len(cache) == 2
            await asyncio.to_thread(flush)
            await until(lambda: len(cache) == 0)
            await cache.read(ALICE, store.fetch(ALICE))
            await cache.read(BOB, store.fetch(BOB))
            assert store.reads == 6
        finally:
            await cache.stop()

    asyncio.run(scenario())


def test_a_row_changed_while_it_was_read_is_not_kept(conninfo: str) -> None:
    async def scenario() -> None:
        store, cache = Store(), QuotaCache(conninfo)
        await cache.start()
        try:
            store.rows[ALICE], store.gate = {"used_seconds": 1}, asyncio.Event()
            reading = asyncio.create_task(cache.read(ALICE, store.fetch(ALICE)))
            await until(lambda: store.reads == 1)
            # The projector commits a change to Alice's row while her read is under way.
            await asyncio.to_thread(notify, conninfo, 40, ALICE)
            await until(lambda: cache.mark == 40)
            store.gate.set()
            assert (await reading)[1] == {"used_seconds": 1}
            store.gate, store.rows[ALICE] = None, {"used_seconds": 3}
            assert (await cache.read(ALICE, store.fetch(ALICE)))[1] == {"used_seconds": 3}

            # A change to someone else's ledger during a read does not stop it being kept
            # (under steady writes by others, reads would otherwise never be kept).
            store.gate = asyncio.Event()
            reading = asyncio.create_task(cache.read(BOB, store.fetch(BOB)))
            await until(lambda: store.gate is not None and store.reads == 3)
            await asyncio.to_thread(notify, conninfo, 50, ALICE)
            await until(lambda: cache.mark == 50)
            store.gate.set()
            await reading
            store.gate = None
            reads = store.reads
            await cache.read(BOB, store.fetch(BOB))
            assert store.reads == reads  # kept
        finally:
            await cache.stop()

    asyncio.run(scenario())


def test_waiting_for_a_position_ends_with_the_notification_or_the_timeout(
    conninfo: str
) -> None:
    async def scenario() -> None:
        cache = QuotaCache(conninfo)
        await cache.start()
        try:
            assert await cache.wait_for(0, 0.1)
            assert not await cache.wait_for(1_000, 0.2)
            waiting = asyncio.create_task(cache.wait_for(1_000, 10))
            await asyncio.sleep(0.05)
            await asyncio.to_thread(notify, conninfo, 1_000)  # a mark-only notice
            assert await waiting
        finally:
            await cache.stop()

    asyncio.run(scenario())


def test_a_lost_connection_empties_the_cache_until_it_listens_again(conninfo: str) -> None:
    async def scenario() -> None:
        store, cache = Store(), QuotaCache(conninfo)
        await cache.start()
        try:
            store.rows[ALICE] = {"used_seconds": 1}
            await cache.read(ALICE, store.fetch(ALICE))

            def cut() -> None:
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = %s AND datname = current_database()",
                        (APPLICATION_NAME,),
                    )

            await asyncio.to_thread(cut)
            await until(lambda: not cache.listening)
            # Notifications may have been missed meanwhile: nothing is answered from memory.
            store.rows[ALICE] = {"used_seconds": 9}
            assert (await cache.read(ALICE, store.fetch(ALICE)))[1] == {"used_seconds": 9}
            assert len(cache) == 0
            await until(lambda: cache.listening)
            await cache.read(ALICE, store.fetch(ALICE))
            reads = store.reads
            await cache.read(ALICE, store.fetch(ALICE))
            assert store.reads == reads  # kept again
        finally:
            await cache.stop()

    asyncio.run(scenario())


def test_a_changed_row_that_clients_read_is_fetched_again_before_they_ask(
    conninfo: str,
) -> None:
    async def scenario() -> None:
        store, cache = Store(), QuotaCache(conninfo)
        await cache.start()
        try:
            store.rows[ALICE], store.rows[BOB], store.mark = {"s": 1}, {"s": 1}, 60
            await cache.read(ALICE, store.fetch(ALICE))
            await cache.read(ALICE, store.fetch(ALICE))  # from memory: Alice polls
            await cache.read(BOB, store.fetch(BOB))  # Bob asked once
            assert store.reads == 2

            # Both change: Alice's row is fetched again by the cache, Bob's is not.
            store.rows[ALICE], store.rows[BOB], store.mark = {"s": 2}, {"s": 2}, 61
            await asyncio.to_thread(notify, conninfo, 61, ALICE, BOB)
            await until(lambda: cache.mark == 61 and store.reads == 3 and len(cache) == 1)
            await asyncio.sleep(0.1)
            assert store.reads == 3
            assert await cache.read(ALICE, store.fetch(ALICE)) == (61, {"s": 2})
            assert store.reads == 3

            # Changed again while the cache fetches it: what it fetched is not kept, and
            # it fetches once more.
            store.gate = asyncio.Event()
            store.rows[ALICE], store.mark = {"s": 3}, 62
            await asyncio.to_thread(notify, conninfo, 62, ALICE)
            await until(lambda: store.reads == 4)
            store.rows[ALICE], store.mark = {"s": 4}, 63
            await asyncio.to_thread(notify, conninfo, 63, ALICE)
            await until(lambda: cache.mark == 63)
            store.gate.set()
            await until(lambda: store.reads == 5 and len(cache) == 1)
            store.gate = None
            assert await cache.read(ALICE, store.fetch(ALICE)) == (63, {"s": 4})
            assert store.reads == 5

            # A refresh that fails (the database is away) leaves the row to the next read.
            store.fail = True
            await asyncio.to_thread(notify, conninfo, 64, ALICE)
            await until(lambda: cache.mark == 64 and store.reads == 6)
            await until(lambda: not cache._refreshing)
            assert len(cache) == 0
            store.fail = False
            store.rows[ALICE], store.mark = {"s": 5}, 64
            assert await cache.read(ALICE, store.fetch(ALICE)) == (64, {"s": 5})
            assert store.reads == 7
        finally:
            await cache.stop()

    asyncio.run(scenario())
