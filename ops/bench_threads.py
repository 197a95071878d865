"""Benchmark: the API's hop from the event loop to a command thread and back, alone: the
loop's `run_in_executor` on a ThreadPoolExecutor (as the API did) against LoopThreads
(adapters/http/threads.py, as it does), on uvloop as the API runs, with a call that does
nothing.

    .venv/bin/python ops/bench_threads.py                  # 5 rounds of 20,000 calls
    .venv/bin/python ops/bench_threads.py --rounds 3 --calls 5000

`--callers` coroutines (16, the bench's pairs) each await one call after another on 8
threads (the API's command threads). Each round runs both, alternating which goes first;
the table gives the process's CPU time and the wall time per call, median and range.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import statistics
import sys
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.http.threads import LoopThreads  # noqa: E402

THREADS = 8


def nothing() -> int:
    return 1


async def measure(kind: str, calls: int, callers: int) -> tuple[float, float]:
    """(CPU µs, wall µs) per call."""
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(THREADS, thread_name_prefix="bench")
    threads = LoopThreads(THREADS, "bench")
    if kind == "run_in_executor":
        def hop() -> Awaitable[int]:
            return loop.run_in_executor(executor, contextvars.copy_context().run, nothing)
    else:
        def hop() -> Awaitable[int]:
            return threads.run(nothing)

    async def caller(n: int) -> None:
        for _ in range(n):
            await hop()

    await asyncio.gather(*(caller(50) for _ in range(callers)))  # warm: threads started
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller(calls // callers) for _ in range(callers)))
    done = calls // callers * callers
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    executor.shutdown()
    threads.shutdown(wait=True)
    return cpu / done * 1e6, wall / done * 1e6


def table(results: dict[str, list[tuple[float, float]]]) -> str:
    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} ({min(values):.1f} to {max(values):.1f})"

    lines = ["| hop | CPU µs/call (median, range) | wall µs/call (median, range) |",
             "|---|---:|---:|"]
    for kind, runs in results.items():
        lines.append(f"| {kind} | {cell([c for c, _ in runs])} | {cell([w for _, w in runs])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--callers", type=int, default=16)
    args = parser.parse_args()
    kinds = ["run_in_executor", "LoopThreads"]
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in kinds if r % 2 == 0 else reversed(kinds):
            results[kind].append(uvloop.run(measure(kind, args.calls, args.callers)))
    print(f"{args.rounds} rounds of {args.calls:,} calls, {args.callers} callers, "
          f"{THREADS} threads, uvloop")
    print(table(results))


if __name__ == "__main__":
    main()
