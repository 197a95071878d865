"""Command-to-projection lag: a separate process polls the quota projection's watermark
about every millisecond and records when it first reached each new value, on the same
monotonic clock the load client stamps answers with."""

from __future__ import annotations

import bisect
import multiprocessing
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection

QUERY = "SELECT coalesce(min(position), 0) FROM projection_partitions WHERE projection = %s"


def _poll(conninfo: str, projection: str, until: float, out: Connection) -> None:
    import psycopg

    marks: list[tuple[float, int]] = []
    last = -1
    polls = 0
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SET application_name = 'xentree-bench-watermark'")
        while time.monotonic() < until:
            row = conn.execute(QUERY, (projection,), prepare=True).fetchone()
            polls += 1
            now = time.monotonic()
            value = int(row[0]) if row else 0
            if value > last:
                marks.append((now, value))
                last = value
            time.sleep(0.001)
    out.send((marks, polls))
    out.close()


class WatermarkPoller:
    def __init__(self, conninfo: str, projection: str, seconds: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(
            target=_poll, args=(conninfo, projection, time.monotonic() + seconds, send),
            daemon=True,
        )
        self._proc.start()
        self.started = time.monotonic()

    def result(self) -> tuple[list[tuple[float, int]], int]:
        marks, polls = self._recv.recv()
        self._proc.join(10)
        return marks, polls


def lags(
    answered: Sequence[tuple[float, int]], marks: Sequence[tuple[float, int]]
) -> tuple[list[float], int]:
    """Seconds from each command's answer until the watermark was seen at or past its
    position (0 if it already was), and how many positions were never reached."""
    values = [v for _, v in marks]
    out: list[float] = []
    missed = 0
    for t_answer, position in answered:
        k = bisect.bisect_left(values, position)
        if k == len(values):
            missed += 1
            continue
        out.append(max(0.0, marks[k][0] - t_answer))
    return out, missed
