"""Per-tenant, per-endpoint rate limits shared by every API process: fixed windows counted
in PostgreSQL (one upsert per call, on an unlogged table; windows and time come from the
database's clock, so processes on hosts with skewed clocks still agree).

Answers carry the IETF httpapi draft headers (`RateLimit-Policy: "verify";q=6000;w=60`,
`RateLimit: "verify";r=5999;t=37`) and the common X-RateLimit-* ones (X-RateLimit-Reset is
the window's end in epoch seconds, as GitHub sends it). A refused call is `RateLimited`,
answered 429 with Retry-After.
"""

from __future__ import annotations

import math
import random
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


COUNT = (
    "WITH clock AS (SELECT extract(epoch FROM clock_timestamp()) AS now) "
    "INSERT INTO rate_limit_counters AS c (tenant_id, endpoint, window_start, hits) "
    "SELECT %(tenant)s, %(endpoint)s, "
    "to_timestamp(floor(clock.now / %(window)s) * %(window)s), 1 FROM clock "
    "ON CONFLICT (tenant_id, endpoint, window_start) DO UPDATE SET hits = c.hits + 1 "
    "RETURNING c.hits, extract(epoch FROM c.window_start) AS start, "
    "(SELECT now FROM clock) AS now"
)


class RateLimiter:
    def __init__(self, connect: Connect, policies: Mapping[str, Policy]) -> None:
        for policy in policies.values():
            if policy.limit < 1 or policy.window_seconds < 1:
                raise ValueError(f"rate limit {policy.name} needs a positive limit and window")
        self._connect = connect
        self._policies = dict(policies)

    async def hit(self, tenant_id: str, endpoint: str) -> RateLimitState:
        """Count one call; the state after it (`allowed` False once over the limit)."""
        policy = self._policies[endpoint]
        async with self._connect() as conn:
            cur = await conn.execute(COUNT, {
                "tenant": tenant_id, "endpoint": endpoint, "window": policy.window_seconds
            }, prepare=True)
            row = await cur.fetchone()
            if random.randrange(_SWEEP_ONE_IN) == 0:
                await conn.execute(
                    "DELETE FROM rate_limit_counters WHERE window_start < now() - "
                    "make_interval(secs => %s)",
                    (2 * policy.window_seconds,),
                )
        hits = int(row["hits"])
        end = float(row["start"]) + policy.window_seconds
        return RateLimitState(
            policy=policy,
            remaining=max(0, policy.limit - hits),
            reset_seconds=max(1, math.ceil(end - float(row["now"]))),
            reset_at=math.ceil(end),
            allowed=hits <= policy.limit,
        )
