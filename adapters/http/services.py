"""What the controllers need, built once per API process by `build_services`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from adapters.asyncreads import AsyncReads
from adapters.auth.api_keys import load_pepper
from adapters.auth.bearer import BearerVerifier
from adapters.auth.service_keys import ServiceKeyChecker
from adapters.bootstrap import build_application, recorder_of
from adapters.eventstore.recorder import LiveRecorder
from adapters.http.dbhealth import DatabaseHealth
from adapters.http.problems import Unavailable
from adapters.http.threads import LoopThreads
from adapters.integration.store import IntegrationStore
from adapters.integration.tokens import IntegrationTokenVerifier, TokenSigner
from adapters.integration.vault import SealedKeyVault
from adapters.quota_cache import QuotaCache
from adapters.ratelimit import RateLimiter, integration_policies
from adapters.readmodels import async_watermark, quota_with_watermark, watermark
from application.live import LiveApplication
from application.principal import Principal
from application.settings import Settings, parse_database_url

# How long a read waits, unasked, for the caller's own last command before it answers
# with what the read model has (an explicit X-Min-Position waits read_wait_seconds, then
# answers 503).
IMPLICIT_WAIT_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class ReadAfter:
    """A read that should reflect `position`. `strict`: the client asked (X-Min-Position)
    and gets 503 if the read model is not there in time; otherwise the API remembered the
    caller's own last command and waits a little for it, then answers as it can."""

    position: int
    strict: bool


class RecentWrites:
    """Each caller's last command position, in this process: their next read waits for
    it without asking (read-your-writes for clients that do not send X-Min-Position, when
    the read reaches the process that took the command, as with one API worker)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._last: dict[tuple[str, str], int] = {}

    def note(self, principal: Principal, position: int) -> None:
        key = (principal.tenant_id, principal.user_id)
        if len(self._last) >= self._capacity and key not in self._last:
            self._last.clear()
        if position > self._last.get(key, 0):
            self._last[key] = position

    def last(self, principal: Principal) -> int | None:
        return self._last.get((principal.tenant_id, principal.user_id))



def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Services:
    settings: Settings
    live: LiveApplication
    bearer: BearerVerifier
    service_keys: ServiceKeyChecker
    pepper: bytes
    reads: ConnectionPool[psycopg.Connection[dict[str, Any]]]
    integration_store: IntegrationStore
    integration_tokens: IntegrationTokenVerifier
    token_signer: TokenSigner
    rate_limiter: RateLimiter
    now: Callable[[], datetime] = utc_now
    database: DatabaseHealth | None = None
    writes: RecentWrites = field(default_factory=RecentWrites)
    # Reads on the event loop (no thread per read), opened by `start` in the API's loop.
    async_reads: AsyncReads | None = None
    # The quota read model in memory, kept coherent by the projector's notifications.
    quota_cache: QuotaCache | None = None
    # The threads that run commands on the event store, from `start` to `stop` (None:
    # the loop's default executor). Fewer than the other blocking work has: a command
    # holds the interpreter most of the time it runs, and more of them at once only
    # contend for it (and wait on each other's appends); an audit replay or a read
    # waiting on a slow database cannot hold them up.
    commands: LoopThreads | None = None

    async def start(self) -> None:
        self.commands = LoopThreads(self.settings.command_threads, "xentree-command")
        if self.async_reads is not None:
            await self.async_reads.open()
        if self.quota_cache is not None:
            await self.quota_cache.start()

    async def stop(self) -> None:
        if self.quota_cache is not None:
            await self.quota_cache.stop()
        if self.async_reads is not None:
            await self.async_reads.close()
        commands, self.commands = self.commands, None
        if commands is not None:
            commands.shutdown(wait=False)

    @asynccontextmanager
    async def aread(self) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
        if self.async_reads is None:
            raise RuntimeError("these services have no async read pool")
        async with self.async_reads.connection() as conn:
            yield conn

    async def quota(
        self,
        tenant_id: str,
        user_id: str,
        period_start: datetime,
        wanted: ReadAfter | None,
        prepare: Callable[[dict[str, Any]], dict[str, Any]] = lambda row: row,
    ) -> tuple[int, dict[str, Any] | None]:
        """The user's latest quota row up to the period (see `quota_with_watermark`) and
        the watermark it is known at, once that has reached `wanted` (bounded): from the
        in-memory cache while it listens, else from PostgreSQL. A row fetched from
        PostgreSQL goes through `prepare` once, before it is kept: what every answer
        would otherwise redo (a row is never changed after that)."""

        async def fetch() -> tuple[int, dict[str, Any] | None]:
            async with self.aread() as conn:
                mark, row = await quota_with_watermark(conn, tenant_id, user_id, period_start)
            return mark, prepare(row) if row is not None else None

        cache = self.quota_cache
        if cache is not None and cache.listening:
            if wanted is not None and not await cache.wait_for(
                wanted.position, self._wait_seconds(wanted)
            ) and cache.listening:
                self._late("quota", wanted, cache.mark)
            if cache.listening:
                return await cache.read((tenant_id, user_id, period_start), fetch)
        deadline = time.monotonic() + self._wait_seconds(wanted)
        while True:
            mark, row = await fetch()
            if wanted is None or mark >= wanted.position or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.01)
        if wanted is not None and mark < wanted.position:
            self._late("quota", wanted, mark)
        return mark, row

    async def read_mark(self, projection: str, wanted: ReadAfter | None) -> int:
        """The projection's watermark (the `as_of` of a read), after waiting (bounded) for
        it to reach `wanted`."""
        deadline = time.monotonic() + self._wait_seconds(wanted)
        while True:
            async with self.aread() as conn:
                mark = await async_watermark(conn, projection)
            if wanted is None or mark >= wanted.position:
                return mark
            if time.monotonic() >= deadline:
                return self._late(projection, wanted, mark)
            await asyncio.sleep(0.01)

    @property
    def recorder(self) -> LiveRecorder:
        return recorder_of(self.live)

    @contextmanager
    def read(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        with self.reads.connection() as conn:
            yield conn

    def wait_for(self, projection: str, wanted: ReadAfter | None) -> int:
        """The projection's watermark, after waiting (bounded) for it to reach `wanted`."""
        deadline = time.monotonic() + self._wait_seconds(wanted)
        while True:
            with self.read() as conn:
                mark = int(watermark(conn, projection))
            if wanted is None or mark >= wanted.position:
                return mark
            if time.monotonic() >= deadline:
                return self._late(projection, wanted, mark)
            time.sleep(0.01)

    def _wait_seconds(self, wanted: ReadAfter | None) -> float:
        if wanted is None or wanted.strict:
            return self.settings.read_wait_seconds
        return min(IMPLICIT_WAIT_SECONDS, self.settings.read_wait_seconds)

    @staticmethod
    def _late(projection: str, wanted: ReadAfter, mark: int) -> int:
        if wanted.strict:
            raise Unavailable(
                f"the {projection} read model has not reached position {wanted.position} yet",
                retry_after=1,
            )
        return mark

    def check_database(self) -> None:
        if self.database is not None and not self.database.up:
            raise Unavailable("the database is unavailable; retry shortly", retry_after=2)

    def close(self) -> None:
        if self.database is not None:
            self.database.close()
        self.reads.close()
        self.live.close()


def build_services(settings: Settings) -> Services:
    conninfo = parse_database_url(settings.database_url).conninfo()
    reads: ConnectionPool[psycopg.Connection[dict[str, Any]]] = ConnectionPool(
        conninfo,
        min_size=1,
        max_size=settings.db_pool_size,
        timeout=2,
        kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": 2},
        open=True,
    )
    live = build_application(settings)
    assert isinstance(live.key_vault, SealedKeyVault)

    @contextmanager
    def read() -> Iterator[psycopg.Connection[dict[str, Any]]]:
        with reads.connection() as conn:
            yield conn

    async_reads = AsyncReads(conninfo, settings.db_pool_size)
    store = IntegrationStore(read, async_reads.connection)
    return Services(
        settings=settings,
        live=live,
        bearer=BearerVerifier.from_settings(settings),
        service_keys=ServiceKeyChecker(settings),
        pepper=load_pepper(settings),
        reads=reads,
        integration_store=store,
        integration_tokens=IntegrationTokenVerifier(
            store,
            issuer=settings.integration_issuer,
            audience=settings.integration_audience,
        ),
        token_signer=TokenSigner(live.key_vault),
        rate_limiter=RateLimiter(async_reads.connection, integration_policies(settings)),
        database=DatabaseHealth(conninfo).start(),
        async_reads=async_reads,
        quota_cache=QuotaCache(conninfo),
    )
