"""Benchmark: 500 concurrent sockets on one realtime bridge process, each in a session
exchanging turns with the reference engine, then ending it.

    .venv/bin/python ops/bench_realtime.py                    # 500 sockets, 3 turns each
    .venv/bin/python ops/bench_realtime.py --sockets 100 --turns 5

Starts its own embedded PostgreSQL, `xentree-live engine` and `xentree-live realtime`
(one process each; the bridge needs no Kafka). Reports:

- event latency: from sending `input_text` to receiving the first server event of the
  turn, and to the AI's `transcript.completed` (the whole streamed turn, its words paced
  by the engine at 20 ms);
- the bridge's memory per socket: its RSS with every session live, minus its RSS before
  the first socket, over the number of sockets (each socket also holds an upstream);
- billing: every session's billed seconds, read back from the event store, against the
  whole seconds between its start and its end (all must match exactly).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import uvloop
from websockets.asyncio.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.auth.dev_issuer import DevIssuer
from adapters.bootstrap import build_application
from application.principal import Principal
from application.settings import load_settings
from ops.launcher import AppProcesses, Output, cli_path
from ops.stack import EmbeddedPostgres, free_port


@dataclass
class Result:
    session_id: str = ""
    first_event: list[float] = field(default_factory=list)
    user_line: list[float] = field(default_factory=list)
    ended: dict[str, object] = field(default_factory=dict)
    error: str | None = None


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def recv_json(ws: ClientConnection) -> dict[str, object]:
    while True:
        frame = await ws.recv()
        if isinstance(frame, str):
            event: dict[str, object] = json.loads(frame)
            return event


async def one_socket(url: str, token: str, turns: int, live: asyncio.Barrier,
                     done: asyncio.Event, result: Result, offset: float) -> None:
    try:
        async with connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                           open_timeout=60, max_size=2**22) as ws:
            await ws.send(json.dumps({"type": "session.start", "event_id": "s",
                                      "session_type": "voice"}))
            while (event := await recv_json(ws))["type"] != "session.started":
                if event["type"] == "error":
                    raise RuntimeError(str(event))
            result.session_id = str(event["session_id"])
            await live.wait()  # every socket is in a session: the memory is measured now
            await asyncio.sleep(offset)  # turns spread over a second, not all at once
            for turn in range(turns):
                sent = time.perf_counter()
                await ws.send(json.dumps({"type": "input_text", "event_id": f"t{turn}",
                                          "text": f"turn {turn} of the benchmark"}))
                first = None
                while True:
                    event = await recv_json(ws)
                    now = time.perf_counter()
                    if first is None:
                        first = now - sent
                        result.first_event.append(first)
                    if event["type"] == "transcript.completed" and event["role"] == "ai":
                        result.user_line.append(now - sent)
                    if event["type"] == "avatar.state" and event["state"] == "idle":
                        break
                await asyncio.sleep(1.0)
            await done.wait()
            await ws.send(json.dumps({"type": "session.end", "event_id": "e"}))
            while (event := await recv_json(ws))["type"] != "session.ended":
                pass
            result.ended = event
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"


async def drive(url: str, tokens: list[str], turns: int, bridge_pid: int) -> tuple[
        list[Result], int, int]:
    live = asyncio.Barrier(len(tokens) + 1)
    done = asyncio.Event()
    results = [Result() for _ in tokens]
    idle_rss = rss_kib(bridge_pid)
    tasks = []
    for i, (token, result) in enumerate(zip(tokens, results, strict=True)):
        offset = (i % 100) / 100
        tasks.append(
            asyncio.create_task(one_socket(url, token, turns, live, done, result, offset))
        )
        await asyncio.sleep(0.002)  # a ramp, not a SYN flood
    await asyncio.wait_for(live.wait(), 120)
    live_rss = rss_kib(bridge_pid)
    await asyncio.sleep(turns * 1.5 + 2)
    done.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    return results, idle_rss, live_rss


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sockets", type=int, default=500)
    parser.add_argument("--turns", type=int, default=3)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it

    work = Path(tempfile.mkdtemp(prefix="xentree-bench-rt-"))
    pg = EmbeddedPostgres(work / "pg", free_port(), log_path=work / "postgres.log")
    port = free_port()
    env = {
        **os.environ,
        "XENTREE_DATABASE_URL": pg.start(),
        "XENTREE_KAFKA_BOOTSTRAP": "127.0.0.1:1",  # unused: no relay in this benchmark
        "XENTREE_STATE_DIR": str(work / "state"),
        "XENTREE_REALTIME_PORT": str(port),
        "XENTREE_ENGINE_URL": f"ws://127.0.0.1:{free_port()}",
        "XENTREE_HEARTBEAT_INTERVAL_SECONDS": "2",
        "PYTHONUNBUFFERED": "1",
    }
    log = (work / "apps.log").open("a", encoding="utf-8")
    apps: AppProcesses | None = None
    try:
        subprocess.run([cli_path(), "migrate"], env=env, check=True, capture_output=True)
        apps = AppProcesses(env, [("engine", ["engine"]), ("realtime", ["realtime"])],
                            output=Output(log)).start()
        settings = load_settings(env)
        issuer = DevIssuer.load_or_create(settings)
        users = [(f"bench-{i % 10}", f"user-{i}") for i in range(args.sockets)]
        tokens = [issuer.mint(t, u, "live:read live:write", 3600) for t, u in users]
        time.sleep(3)  # the bridge and engine bind their ports
        bridge_pid = apps.pid("realtime")
        assert bridge_pid is not None
        url = f"ws://127.0.0.1:{port}"
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            results, idle_rss, live_rss = runner.run(
                drive(url, tokens, args.turns, bridge_pid)
            )
        report(settings, users, results, idle_rss, live_rss, args)
    finally:
        if apps is not None:
            apps.stop()
        log.close()
        pg.stop()
    return 0


def report(settings, users, results, idle_rss, live_rss, args) -> None:  # type: ignore[no-untyped-def]
    errors = [r.error for r in results if r.error]
    first = [x for r in results for x in r.first_event]
    lines = [x for r in results for x in r.user_line]
    app = build_application(settings)
    exact = 0
    billed_total = 0
    try:
        for (tenant, user), result in zip(users, results, strict=True):
            if not result.session_id:
                continue
            view = app.session_view(
                Principal(tenant_id=tenant, user_id=user, scopes=frozenset(),
                          credential="bearer"),
                result.session_id,
            )
            whole = math.floor((view["ended_at"] - view["started_at"]).total_seconds())
            billed_total += view["session_seconds"]
            if view["end_reason"] == "client" and view["session_seconds"] == whole:
                exact += 1
    finally:
        app.close()
    print(f"sockets {args.sockets}, turns each {args.turns}, errors {len(errors)}")
    for error in errors[:5]:
        print(f"  error: {error}")
    ms = 1000
    print(f"input_text → first event: p50 {statistics.median(first) * ms:.1f} ms, "
          f"p99 {percentile(first, 99) * ms:.1f} ms, max {max(first) * ms:.1f} ms "
          f"({len(first)} turns)")
    print(f"input_text → AI transcript.completed (whole turn): "
          f"p50 {statistics.median(lines) * ms:.1f} ms, p99 {percentile(lines, 99) * ms:.1f} ms")
    per_socket = (live_rss - idle_rss) / args.sockets
    print(f"bridge RSS idle {idle_rss / 1024:.1f} MiB, with {args.sockets} live sessions "
          f"{live_rss / 1024:.1f} MiB: {per_socket:.1f} KiB per socket")
    print(f"sessions billed exactly: {exact}/{args.sockets} ({billed_total} s in all)")


if __name__ == "__main__":
    sys.exit(main())
