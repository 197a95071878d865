"""What the controllers need, built once per API process by `build_services`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from adapters.auth.api_keys import load_pepper
from adapters.auth.bearer import BearerVerifier
from adapters.auth.service_keys import ServiceKeyChecker
from adapters.bootstrap import build_application, recorder_of
from adapters.eventstore.recorder import LiveRecorder
from adapters.http.dbhealth import DatabaseHealth
from adapters.http.problems import Unavailable
from adapters.integration.store import IntegrationStore
from adapters.integration.tokens import IntegrationTokenVerifier, TokenSigner
from adapters.integration.vault import SealedKeyVault
from adapters.ratelimit import RateLimiter, integration_policies
from adapters.readmodels import async_watermark, watermark
from application.live import LiveApplication
from application.settings import Settings, parse_database_url


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
    # Read models are read on the event loop (no thread per read); opened by `start`, in
    # the API's loop.
    async_reads: AsyncConnectionPool[psycopg.AsyncConnection[dict[str, Any]]] | None = None

    async def start(self) -> None:
        if self.async_reads is not None:
            return
        pool: AsyncConnectionPool[psycopg.AsyncConnection[dict[str, Any]]] = (
            AsyncConnectionPool(
                parse_database_url(self.settings.database_url).conninfo(),
                min_size=1,
                max_size=self.settings.db_pool_size,
                timeout=2,
                kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": 2},
                open=False,
            )
        )
        await pool.open()
        self.async_reads = pool

    async def stop(self) -> None:
        pool, self.async_reads = self.async_reads, None
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def aread(self) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
        if self.async_reads is None:
            raise RuntimeError("Services.start() has not run")
        async with self.async_reads.connection() as conn:
            yield conn

    async def read_mark(self, projection: str, min_position: int | None) -> int:
        """The projection's watermark (the `as_of` of a read), after waiting for it to
        reach `min_position` when the client asked to read its own writes."""
        if min_position is not None:
            return await self.await_position(projection, min_position)
        async with self.aread() as conn:
            return await async_watermark(conn, projection)

    async def await_position(self, projection: str, min_position: int) -> int:
        """The projection's watermark once it has reached `min_position` (the client
        reads its own writes), waiting at most `read_wait_seconds`."""
        deadline = time.monotonic() + self.settings.read_wait_seconds
        while True:
            async with self.aread() as conn:
                mark = await async_watermark(conn, projection)
            if mark >= min_position:
                return mark
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"the {projection} read model has not reached position {min_position} yet",
                    retry_after=1,
                )
            await asyncio.sleep(0.02)

    @property
    def recorder(self) -> LiveRecorder:
        return recorder_of(self.live)

    @contextmanager
    def read(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        with self.reads.connection() as conn:
            yield conn

    def wait_for(self, projection: str, min_position: int | None) -> int:
        """The projection's watermark, after waiting (bounded) for it to reach
        `min_position` when the client asked to read its own writes."""
        deadline = time.monotonic() + self.settings.read_wait_seconds
        while True:
            with self.read() as conn:
                mark = int(watermark(conn, projection))
            if min_position is None or mark >= min_position:
                return mark
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"the {projection} read model has not reached position {min_position} yet",
                    retry_after=1,
                )
            time.sleep(0.02)

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

    store = IntegrationStore(read)
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
        rate_limiter=RateLimiter(read, integration_policies(settings)),
        database=DatabaseHealth(conninfo).start(),
    )
