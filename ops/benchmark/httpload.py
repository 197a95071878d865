"""A small asyncio HTTP/1.1 load client for the flows wrk cannot drive.

Raw requests over keep-alive connections, parsed just enough (status, headers, a
Content-Length body), on uvloop. Two shapes:

- closed loop: N workers, each repeating a flow as fast as answers come back;
- open loop: requests due at a fixed rate whatever the server does, latency counted from
  the moment each was due, so a stalled server shows as latency instead of a slower
  generator (no coordinated omission).

Timestamps are `time.monotonic()`, the clock the watermark poller uses in its own process.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

HOST = "127.0.0.1"
# An idle connection is not reused after this long: the API server (uvicorn) closes a
# keep-alive connection idle for 5 s, and a request sent as it does so fails. Ordinary
# clients expire idle connections the same way (httpx's keepalive_expiry).
KEEPALIVE_EXPIRY = 3.0


class Response(NamedTuple):
    status: int
    headers: dict[bytes, bytes]
    body: bytes


def build_request(
    method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n{head}\r\n".encode() + body


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, host: str = HOST) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, request: bytes) -> Response:
        self.writer.write(request)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        headers: dict[bytes, bytes] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0"))
        body = await self.reader.readexactly(length) if length else b""
        return Response(int(status_line.split()[1]), headers, body)

    def close(self) -> None:
        self.writer.close()


@dataclass
class LoadResult:
    seconds: float
    latencies: list[float] = field(default_factory=list)  # seconds, one per unit of work
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    target_rate: float | None = None
    dropped: int = 0  # open loop: due while too many were in flight, or unanswered at the end

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    @property
    def failed(self) -> int:
        return self.errors + self.dropped + sum(
            n for s, n in self.statuses.items() if s >= 400
        )

    def summary(self) -> dict[str, float | int | None]:
        return {
            "count": self.count,
            "seconds": round(self.seconds, 3),
            "rate": round(self.rate, 1),
            "p50_ms": self.percentile_ms(50),
            "p99_ms": self.percentile_ms(99),
            "failed": self.failed,
            "target_rate": self.target_rate,
            "dropped": self.dropped,
        }


def run(coro: Awaitable[LoadResult]) -> LoadResult:
    import uvloop

    async def main() -> LoadResult:
        return await coro

    return uvloop.run(main())


# A flow does one unit of work on a connection (one request, or start + end) and returns
# the statuses it saw.
Flow = Callable[[Connection, int, int], Awaitable[Sequence[int]]]


async def closed_loop(port: int, flow: Flow, workers: int, seconds: float) -> LoadResult:
    result = LoadResult(seconds=seconds)
    deadline = time.monotonic() + seconds

    async def worker(w: int) -> None:
        conn = await Connection.open(port)
        i = 0
        try:
            while time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    statuses = await flow(conn, w, i)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    result.errors += 1
                    conn.close()
                    conn = await Connection.open(port)
                    continue
                result.latencies.append(time.monotonic() - started)
                result.statuses.update(statuses)
                i += 1
        finally:
            conn.close()

    started = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(workers)))
    result.seconds = time.monotonic() - started
    return result


def request_flow(requests: Sequence[bytes]) -> Flow:
    """A flow sending the requests round-robin, spread over the workers."""

    async def flow(conn: Connection, worker: int, i: int) -> Sequence[int]:
        response = await conn.send(requests[(worker * 7919 + i) % len(requests)])
        return (response.status,)

    return flow


async def open_loop(
    port: int,
    rate: float,
    seconds: float,
    make_request: Callable[[int], bytes],
    on_response: Callable[[int, Response, float], None] | None = None,
    max_in_flight: int = 256,
    grace: float = 5.0,
) -> LoadResult:
    """`rate` requests per second for `seconds`, each on an idle connection (a new one if
    none is idle); latency from the moment the request was due. A server that falls behind
    is not allowed to build an unbounded backlog: requests due while `max_in_flight` are
    outstanding, and those unanswered `grace` seconds after the last was due, are counted
    as dropped."""
    result = LoadResult(seconds=seconds, target_rate=rate)
    idle: list[tuple[Connection, float]] = []  # with the moment each became idle
    total = int(rate * seconds)
    start = time.monotonic() + 0.05

    def reuse() -> Connection | None:
        while idle:
            conn, since = idle.pop()
            if time.monotonic() - since < KEEPALIVE_EXPIRY:
                return conn
            conn.close()
        return None

    async def one(i: int, due: float) -> None:
        conn = reuse()
        try:
            if conn is None:
                conn = await Connection.open(port)
            response = await conn.send(make_request(i))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            result.errors += 1
            if conn is not None:
                conn.close()
            return
        done = time.monotonic()
        result.latencies.append(done - due)
        result.statuses[response.status] += 1
        idle.append((conn, done))
        if on_response is not None:
            on_response(i, response, done)

    pending: set[asyncio.Task[None]] = set()
    for i in range(total):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(pending) >= max_in_flight:
            result.dropped += 1
            continue
        task = asyncio.create_task(one(i, due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        _done, late = await asyncio.wait(set(pending), timeout=grace)
        for task in late:
            task.cancel()
        result.dropped += len(late)
    result.seconds = time.monotonic() - start
    for conn, _since in idle:
        conn.close()
    return result
