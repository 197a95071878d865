"""Rate limits shared by API processes, against real PostgreSQL: two limiters (two
processes' worth of state) on one counter table never allow more than the limit together,
count one by one near it, and lose at most what their last blocks held."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import pytest

from adapters.asyncreads import AsyncReads
from adapters.eventstore.schema import migrate
from adapters.ratelimit import MAX_LEASE, Policy, RateLimiter, RateLimitState
from application.settings import Settings, parse_database_url
from tests.support.services import scratch_database


@pytest.fixture(scope="module")
def conninfo(database_url: str) -> Iterator[str]:
    with scratch_database(database_url) as url:
        migrate(Settings(database_url=url))
        yield parse_database_url(url).conninfo()


async def _limiters(conninfo: str, limit: int, n: int = 2
                    ) -> tuple[list[AsyncReads], list[RateLimiter]]:
    pools = [AsyncReads(conninfo, 4) for _ in range(n)]
    for pool in pools:
        await pool.open()
    policy = {"verify": Policy("verify", limit, 3600)}
    return pools, [RateLimiter(pool.connection, policy) for pool in pools]


def test_two_processes_share_a_small_limit_exactly(conninfo: str) -> None:
    async def run() -> list[RateLimitState]:
        pools, (a, b) = await _limiters(conninfo, limit=5)
        tenant = f"t-{secrets.token_hex(4)}"
        try:
            return [await (a if i % 2 else b).hit(tenant, "verify") for i in range(8)]
        finally:
            for pool in pools:
                await pool.close()

    states = asyncio.run(run())
    assert [s.allowed for s in states] == [True] * 5 + [False] * 3
    assert [s.remaining for s in states] == [4, 3, 2, 1, 0, 0, 0, 0]


def test_concurrent_processes_never_allow_more_than_the_limit(conninfo: str) -> None:
    limit, calls = 1000, 1600

    async def run() -> tuple[int, int]:
        pools, limiters = await _limiters(conninfo, limit=limit)
        tenant = f"t-{secrets.token_hex(4)}"
        try:
            states = await asyncio.gather(*(
                limiters[i % 2].hit(tenant, "verify") for i in range(calls)
            ))
            async with pools[0].connection() as conn:
                cur = await conn.execute(
                    "SELECT sum(hits) AS hits FROM rate_limit_counters WHERE tenant_id = %s",
                    (tenant,),
                )
                row = await cur.fetchone()
            assert row is not None
            return sum(s.allowed for s in states), int(row["hits"])
        finally:
            for pool in pools:
                await pool.close()

    allowed, counted = asyncio.run(run())
    assert allowed <= limit
    # Blocks reserved and not spent are the only loss: one per process at most.
    assert allowed >= limit - 2 * MAX_LEASE
    assert counted >= allowed


def test_far_from_the_limit_calls_are_counted_in_blocks(conninfo: str) -> None:
    async def run() -> tuple[int, list[RateLimitState]]:
        pools, (a,) = await _limiters(conninfo, limit=100_000, n=1)
        tenant = f"t-{secrets.token_hex(4)}"
        try:
            states = [await a.hit(tenant, "verify") for _ in range(200)]
            async with pools[0].connection() as conn:
                cur = await conn.execute(
                    "SELECT hits FROM rate_limit_counters WHERE tenant_id = %s", (tenant,)
                )
                row = await cur.fetchone()
            assert row is not None
            return int(row["hits"]), states
        finally:
            for pool in pools:
                await pool.close()

    counted, states = asyncio.run(run())
    assert all(s.allowed for s in states)
    # Every call was counted before it was allowed, in blocks of at most MAX_LEASE.
    assert 200 <= counted < 200 + MAX_LEASE
    assert [s.remaining for s in states] == [100_000 - i for i in range(1, 201)]
