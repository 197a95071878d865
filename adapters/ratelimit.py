"""Per-tenant, per-endpoint rate limits shared by every API process: fixed windows counted
in PostgreSQL (upserts on an unlogged table; windows and time come from the database's
clock, so processes on hosts with skewed clocks still agree). A process counts calls in
blocks while the window is far from its limit and one by one near it (`RateLimiter`).

Answers carry the IETF httpapi draft headers (`RateLimit-Policy: "verify";q=6000;w=60`,
`RateLimit: "verify";r=5999;t=37`) and the common X-RateLimit-* ones (X-RateLimit-Reset is
the window's end in epoch seconds, as GitHub sends it). A refused call is `RateLimited`,
answered 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from application.settings import Settings

# An async connection (adapters/asyncreads.py): counting is one statement, on the loop.
Connect = Callable[[], AbstractAsyncContextManager[Any]]

# Old windows are swept by about one call in this many.
_SWEEP_ONE_IN = 200


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    limit: int
    window_seconds: int


@dataclass(frozen=True, slots=True)
class RateLimitState:
    policy: Policy
    remaining: int
    reset_seconds: int  # until the window ends
    reset_at: int  # the window's end, epoch seconds
    allowed: bool

    def headers(self) -> dict[str, str]:
        p = self.policy
        return {
            "RateLimit-Policy": f'"{p.name}";q={p.limit};w={p.window_seconds}',
            "RateLimit": f'"{p.name}";r={self.remaining};t={self.reset_seconds}',
            "X-RateLimit-Limit": str(p.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_at),
        }


class RateLimited(Exception):
    def __init__(self, state: RateLimitState) -> None:
        super().__init__(f"rate limit {state.policy.name} exceeded")
        self.state = state


def integration_policies(settings: Settings) -> dict[str, Policy]:
    window = settings.rate_limit_window_seconds
    return {
        "verify": Policy("verify", settings.rate_limit_verify, window),
        "grant": Policy("grant", settings.rate_limit_grant, window),
        "rotate": Policy("rotate", settings.rate_limit_rotate, window),
    }


# A process reserves calls from the shared counter in blocks and spends them from memory:
# a block is at most this many calls, and at most this share of what the window has left
# when the process last looked, so near the limit every call is one counted upsert.
MAX_LEASE = 64
LEASE_SHARE = 16
_MAX_KEYS = 10_000  # (tenant, endpoint) pairs held in memory before starting over

COUNT = (
    "WITH clock AS (SELECT extract(epoch FROM clock_timestamp()) AS now) "
    "INSERT INTO rate_limit_counters AS c (tenant_id, endpoint, window_start, hits) "
    "SELECT %(tenant)s, %(endpoint)s, "
    "to_timestamp(floor(clock.now / %(window)s) * %(window)s), %(n)s FROM clock "
    "ON CONFLICT (tenant_id, endpoint, window_start) DO UPDATE SET hits = c.hits + %(n)s "
    "RETURNING c.hits, extract(epoch FROM c.window_start) AS start, "
    "(SELECT now FROM clock) AS now"
)


@dataclass(slots=True)
class Lease:
    """Counter values of one window this process reserved and may spend, `next` up to
    `last` (the counter right after the reservation), by the database's clock."""

    policy: Policy
    next: int
    last: int
    end: float  # the window's end, epoch seconds by the database's clock
    offset: float  # the database's clock minus this process's monotonic clock

    def take(self) -> RateLimitState | None:
        """Spend one call: its state, or None when a new reservation is needed (this one
        is spent with the window not yet over the limit, or the window has ended)."""
        now = time.monotonic() + self.offset
        if now >= self.end:
            return None
        limit = self.policy.limit
        if self.next <= self.last:
            count = self.next
            self.next += 1
        elif self.last >= limit:
            # The counter only grows within a window: every call from here on is refused,
            # with no need to count it.
            count = limit + 1
        else:
            return None
        return RateLimitState(
            policy=self.policy,
            remaining=max(0, limit - count),
            reset_seconds=max(1, math.ceil(self.end - now)),
            reset_at=math.ceil(self.end),
            allowed=count <= limit,
        )

    def next_size(self) -> int:
        """How many calls the next reservation of this window takes."""
        left = self.policy.limit - self.last
        return max(1, min(MAX_LEASE, left // LEASE_SHARE))


class RateLimiter:
    """Fixed-window limits counted in PostgreSQL, spent in blocks.

    Every call is counted against the shared counter before it is allowed, so a limit is
    never exceeded, whatever the number of processes. Far from the limit a process counts
    a block of calls in one upsert and spends them from memory (1/16 of what the window
    had left, at most 64); near it, every call is an upsert of its own. The cost: calls a
    process reserved and did not spend before its window ended still count, so with P
    processes a tenant may be refused up to (P - 1) x 64 calls before the limit (when the
    limit is large; with 1/16 of the remainder, never more than a small share of it)."""

    def __init__(self, connect: Connect, policies: Mapping[str, Policy]) -> None:
        for policy in policies.values():
            if policy.limit < 1 or policy.window_seconds < 1:
                raise ValueError(f"rate limit {policy.name} needs a positive limit and window")
        self._connect = connect
        self._policies = dict(policies)
        self._leases: dict[tuple[str, str], Lease] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def hit(self, tenant_id: str, endpoint: str) -> RateLimitState:
        """Count one call; the state after it (`allowed` False once over the limit)."""
        policy = self._policies[endpoint]
        key = (tenant_id, endpoint)
        lease = self._leases.get(key)
        state = lease.take() if lease is not None else None
        if state is not None:
            return state
        if len(self._locks) >= _MAX_KEYS:
            self._locks.clear()
            self._leases.clear()
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # one reservation at a time per key; the others spend from it
            lease = self._leases.get(key)
            state = lease.take() if lease is not None else None
            if state is not None:
                return state
            now = time.monotonic()
            same_window = lease is not None and now + lease.offset < lease.end
            size = lease.next_size() if lease is not None and same_window else 1
            lease = await self._reserve(tenant_id, endpoint, policy, size)
            self._leases[key] = lease
            state = lease.take()
        assert state is not None  # a fresh reservation holds at least one call
        return state

    async def _reserve(
        self, tenant_id: str, endpoint: str, policy: Policy, size: int
    ) -> Lease:
        async with self._connect() as conn:
            cur = await conn.execute(COUNT, {
                "tenant": tenant_id, "endpoint": endpoint, "window": policy.window_seconds,
                "n": size,
            }, prepare=True)
            row = await cur.fetchone()
            if random.randrange(_SWEEP_ONE_IN) == 0:
                await conn.execute(
                    "DELETE FROM rate_limit_counters WHERE window_start < now() - "
                    "make_interval(secs => %s)",
                    (2 * policy.window_seconds,),
                )
        hits = int(row["hits"])
        return Lease(
            policy=policy,
            next=hits - size + 1,
            last=hits,
            end=float(row["start"]) + policy.window_seconds,
            offset=float(row["now"]) - time.monotonic(),
        )
