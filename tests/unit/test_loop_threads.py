"""LoopThreads: the API's command threads (adapters/http/threads.py)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time

import pytest
import uvloop

from adapters.http.threads import LoopThreads

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def test_a_call_answers_with_its_result_in_a_named_thread_with_the_callers_context() -> None:
    threads = LoopThreads(2, "xentree-command")

    async def main() -> tuple[str, str, int]:
        request_id.set("r-1")
        return await threads.run(
            lambda: (threading.current_thread().name, request_id.get(), 42)
        )

    try:
        name, seen, value = uvloop.run(main())
    finally:
        threads.shutdown(wait=True)
    assert name.startswith("xentree-command-")
    assert (seen, value) == ("r-1", 42)


def test_a_calls_exception_reaches_its_caller_and_the_thread_goes_on() -> None:
    threads = LoopThreads(1, "t")

    def fails() -> None:
        raise ValueError("no")

    def stops() -> None:
        raise StopIteration

    async def main() -> int:
        with pytest.raises(ValueError, match="no"):
            await threads.run(fails)
        with pytest.raises(RuntimeError, match="StopIteration"):
            await threads.run(stops)
        return await threads.run(lambda: 7)

    try:
        assert asyncio.run(main()) == 7
    finally:
        threads.shutdown(wait=True)


def test_no_more_calls_run_at_once_than_there_are_threads() -> None:
    threads = LoopThreads(3, "t")
    lock = threading.Lock()
    running, most = 0, 0

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01)
        with lock:
            running -= 1

    async def main() -> None:
        await asyncio.gather(*(threads.run(work) for _ in range(20)))

    try:
        asyncio.run(main())
    finally:
        threads.shutdown(wait=True)
    assert most == 3


def test_a_call_cancelled_before_a_thread_took_it_up_never_runs() -> None:
    threads = LoopThreads(1, "t")
    gate = threading.Event()
    ran: list[str] = []

    async def main() -> None:
        first = threads.run(lambda: gate.wait(5))
        second = threads.run(lambda: ran.append("second"))
        second.cancel()
        gate.set()
        await first
        assert await threads.run(lambda: "third") == "third"

    try:
        asyncio.run(main())
    finally:
        threads.shutdown(wait=True)
    assert ran == []


def test_shutdown_lets_queued_calls_finish_then_refuses_more() -> None:
    threads = LoopThreads(1, "t")
    done: list[int] = []

    async def main() -> None:
        futures = [threads.run(functools.partial(done.append, i)) for i in range(5)]
        threads.shutdown()
        await asyncio.gather(*futures)
        with pytest.raises(RuntimeError, match="shut down"):
            threads.run(lambda: None)

    asyncio.run(main())
    threads.shutdown(wait=True)
    assert done == [0, 1, 2, 3, 4]
    assert not any(t.is_alive() for t in threads._threads)


def test_a_result_for_a_closed_loop_is_dropped_without_harm() -> None:
    threads = LoopThreads(1, "t")
    gate = threading.Event()

    async def main() -> None:
        threads.run(lambda: gate.wait(5))  # never awaited: the loop closes first

    asyncio.run(main())
    gate.set()
    threads.shutdown(wait=True)
    assert not any(t.is_alive() for t in threads._threads)


def test_at_least_one_thread() -> None:
    with pytest.raises(ValueError):
        LoopThreads(0, "t")
