"""The API's pool of PostgreSQL connections for reads on the event loop (read models, the
rate-limit counters, the revocation check): no thread hop per read. Opened in the API's
own loop (`open`, from the app's lifespan)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

AsyncConn = psycopg.AsyncConnection[dict[str, Any]]


class AsyncReads:
    def __init__(self, conninfo: str, max_size: int) -> None:
        self._conninfo = conninfo
        self._max_size = max_size
        self._pool: AsyncConnectionPool[AsyncConn] | None = None

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool: AsyncConnectionPool[AsyncConn] = AsyncConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=self._max_size,
            timeout=2,
            kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": 2},
            open=False,
        )
        await pool.open()
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConn]:
        if self._pool is None:
            raise RuntimeError("the API's async read pool is not open")
        async with self._pool.connection() as conn:
            yield conn
