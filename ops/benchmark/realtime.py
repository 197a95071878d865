"""Realtime: many sockets on one bridge process, each with a started session; the latency of
a client event's reply (`session.heartbeat` → the event naming it in `reply_to`) at a fixed
rate spread over the sockets, and the bridge's resident memory per socket."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from ops.benchmark.httpload import LoadResult


@dataclass
class RealtimeResult:
    wanted: int
    opened: int = 0
    open_errors: list[str] = field(default_factory=list)
    start: LoadResult = field(default_factory=lambda: LoadResult(seconds=0))
    events: LoadResult = field(default_factory=lambda: LoadResult(seconds=0))
    rss_before: int = 0
    rss_after: int = 0

    @property
    def bytes_per_socket(self) -> float | None:
        return (self.rss_after - self.rss_before) / self.opened if self.opened else None


def _rss(pid: int) -> int:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


async def _run(url: str, tokens: list[str], pid: int, rate: float, seconds: float,
               result: RealtimeResult) -> None:
    from websockets.asyncio.client import ClientConnection, connect

    result.rss_before = _rss(pid)
    waiting: dict[str, tuple[float, asyncio.Future[float]]] = {}
    gate = asyncio.Semaphore(16)

    async def reader(ws: ClientConnection) -> None:
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    continue
                reply_to = json.loads(message).get("reply_to")
                entry = waiting.pop(reply_to, None) if reply_to else None
                if entry is not None and not entry[1].done():
                    entry[1].set_result(time.monotonic())
        except Exception:  # noqa: S110 - a closed socket ends its reader
            pass

    async def open_one(token: str) -> tuple[ClientConnection, asyncio.Task[None]]:
        async with gate:
            t = time.monotonic()
            ws = await connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                               open_timeout=30, max_size=2**22)
            await ws.send(json.dumps({"type": "session.start", "session_type": "voice",
                                      "event_id": "start"}))
            while True:
                message = await asyncio.wait_for(ws.recv(), 30)
                if isinstance(message, bytes):
                    continue
                event: dict[str, Any] = json.loads(message)
                if event["type"] == "session.started":
                    break
                if event["type"] == "error":
                    await ws.close()
                    raise RuntimeError(f"{event.get('code')}: {event.get('message')}")
            result.start.latencies.append(time.monotonic() - t)
            return ws, asyncio.create_task(reader(ws))

    started = time.monotonic()
    opened = await asyncio.gather(*(open_one(t) for t in tokens), return_exceptions=True)
    result.start.seconds = time.monotonic() - started
    sockets = [o for o in opened if not isinstance(o, BaseException)]
    result.open_errors = sorted({str(o)[:120] for o in opened if isinstance(o, BaseException)})
    result.opened = len(sockets)
    await asyncio.sleep(1.0)
    result.rss_after = _rss(pid)
    if sockets:
        loop = asyncio.get_running_loop()
        total = int(rate * seconds)
        t0 = time.monotonic()
        pending = []

        async def one(i: int) -> None:
            ws = sockets[i % len(sockets)][0]
            future: asyncio.Future[float] = loop.create_future()
            sent = time.monotonic()
            waiting[f"hb{i}"] = (sent, future)
            try:
                await ws.send(json.dumps({"type": "session.heartbeat", "event_id": f"hb{i}"}))
                done = await asyncio.wait_for(future, 10)
            except Exception:
                result.events.errors += 1
                return
            result.events.latencies.append(done - sent)

        for i in range(total):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(one(i)))
        await asyncio.gather(*pending)
        result.events.seconds = time.monotonic() - t0
    await asyncio.gather(*(ws.close() for ws, _ in sockets), return_exceptions=True)
    for _, task in sockets:
        task.cancel()


def run_realtime(url: str, tokens: list[str], pid: int, rate: float,
                 seconds: float) -> RealtimeResult:
    import uvloop

    result = RealtimeResult(wanted=len(tokens))
    uvloop.run(_run(url, tokens, pid, rate, seconds, result))
    return result
