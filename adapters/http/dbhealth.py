"""Knows, within half a second, whether PostgreSQL answers, so that requests arriving
while it is down are refused at once with 503 instead of waiting out every pool timeout
and retry of the layers below."""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import psycopg

log = logging.getLogger("xentree.dbhealth")

PROBE_INTERVAL_SECONDS = 0.5


class DatabaseHealth:
    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._up = threading.Event()
        self._up.set()  # assume up until a probe says otherwise
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._run, name="db-health", daemon=True)

    @property
    def up(self) -> bool:
        return self._up.is_set()

    def start(self) -> DatabaseHealth:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._disconnect()

    def _run(self) -> None:
        while not self._stop.is_set():
            ok = self._probe()
            if ok != self.up:
                log.warning("PostgreSQL is %s", "reachable again" if ok else "unreachable")
            if ok:
                self._up.set()
            else:
                self._up.clear()
            self._stop.wait(PROBE_INTERVAL_SECONDS)

    def _probe(self) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=1)
            self._conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            self._disconnect()
            return False

    def _disconnect(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None
