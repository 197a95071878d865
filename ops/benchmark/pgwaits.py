"""Where PostgreSQL's client backends spend a load's time (`./ops/bench --pg-waits`).

A thread samples `pg_stat_activity` every few milliseconds while the load runs and counts
the active client backends: those in the append function by what they wait for (the
append lock, the WAL flush of their commit, nothing: running), and those in any other
statement. A group of appends committed together (adapters/eventstore/group_commit.py) runs each
append as a statement of the grouped function, counted as in the append, and flushes at
its COMMIT, counted among the other statements. The average number of backends in a
state, divided by the commands per second, is the time each command spends in it
(Little's law). The sampler costs the server a query per interval, so it samples a run of
its own, never a measured one.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from types import TracebackType

import psycopg

from adapters.eventstore.append import APPEND_CALL, GROUPED_CALL

APPEND_PREFIX = APPEND_CALL.split("(", 1)[0]  # "SELECT <schema>.<append function>"
GROUPED_PREFIX = GROUPED_CALL.split("(", 1)[0]  # "SELECT ... FROM <schema>.<grouped>"
# The states of a backend in the append function, with how the report names them.
APPEND_STATES = {
    "append: lock": "waiting for the append lock",
    "append: WAL flush": "flushing WAL at commit",
    "append: running": "running",
    "append: other": "other waits",
}

SAMPLE = """
SELECT wait_event_type, wait_event,
       starts_with(query, %s) OR starts_with(query, %s) AS appending
FROM pg_stat_activity
WHERE state = 'active' AND backend_type = 'client backend' AND pid <> pg_backend_pid()
"""


def state_of(wait_event_type: str | None, wait_event: str | None, appending: bool) -> str:
    if not appending:
        return "other"
    if wait_event_type is None:
        return "append: running"
    if wait_event_type == "Lock":
        return "append: lock"
    if (wait_event or "").lower() in ("walsync", "walwrite"):
        return "append: WAL flush"
    return "append: other"


@dataclass
class Waits:
    samples: int
    seconds: float
    backends: Counter[str]  # state -> backends seen in it, summed over the samples

    def mean(self, state: str) -> float:
        """Backends in the state on average."""
        return self.backends[state] / self.samples if self.samples else 0.0

    def describe(self, commands_per_s: float) -> str:
        append = sum(self.mean(s) for s in APPEND_STATES)

        def per_command(backends: float) -> str:
            return f"{backends / commands_per_s * 1000:.2f} ms" if commands_per_s else "—"

        parts = ", ".join(
            f"{label} {self.mean(s):.2f} ({per_command(self.mean(s))})"
            for s, label in APPEND_STATES.items()
        )
        return (
            f"backends in the append on average {append:.2f}, per command "
            f"{per_command(append)}: {parts}; in other statements {self.mean('other'):.2f}; "
            f"{self.samples:,} samples over {self.seconds:.0f} s"
        )


class WaitSampler:
    """`with WaitSampler(conninfo) as sampler: <load>`, then `sampler.waits`."""

    def __init__(self, conninfo: str, interval_s: float = 0.005) -> None:
        self._conninfo = conninfo
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-waits", daemon=True)
        self._counts: Counter[str] = Counter()
        self._samples = 0
        self._seconds = 0.0
        self._error: BaseException | None = None
        self._ready = threading.Event()

    def __enter__(self) -> WaitSampler:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(10)
        if self._error is not None and exc is None:
            raise self._error

    @property
    def waits(self) -> Waits:
        return Waits(self._samples, self._seconds, Counter(self._counts))

    def _run(self) -> None:
        try:
            with psycopg.connect(self._conninfo, autocommit=True) as conn:
                conn.execute("SET application_name = 'xentree-bench-pg-waits'")
                self._ready.set()
                started = time.monotonic()
                while not self._stop.is_set():
                    rows = conn.execute(SAMPLE, (APPEND_PREFIX, GROUPED_PREFIX)).fetchall()
                    self._counts.update(state_of(*row) for row in rows)
                    self._samples += 1
                    self._stop.wait(self._interval)
                self._seconds = time.monotonic() - started
        except BaseException as error:  # reported by __exit__
            self._error = error
        finally:
            self._ready.set()
