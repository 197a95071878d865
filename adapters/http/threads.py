"""Threads that run an event loop's blocking calls (the API's commands on the event store).

`loop.run_in_executor` makes a concurrent.futures Future per call, wraps it in an asyncio
Future, and chains the two with callbacks on both sides: ~20 µs of CPU per call on this
machine, against ~5 µs for a queue put and one `call_soon_threadsafe` with the result
(`.venv/bin/python ops/bench_threads.py`). Each command pays it once, and a start + end
pair costs the API about 1.4 ms.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# A call waiting for a thread: the loop and future to answer on, the caller's context.
_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", contextvars.Context,
              Callable[[], Any]]


class LoopThreads:
    """A fixed set of threads running calls for asyncio callers, in order of arrival.

    A call whose caller was cancelled before a thread took it up is skipped (as
    `run_in_executor` skips one not yet started); one already running runs to its end and
    its result is dropped. Each call runs in a copy of its caller's context (the request
    id in the logs)."""

    def __init__(self, size: int, name: str) -> None:
        if size < 1:
            raise ValueError("LoopThreads needs at least one thread")
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """`fn()` in one of the threads; await the future for its result or exception."""
        if self._closed:
            raise RuntimeError("these threads are shut down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((loop, future, contextvars.copy_context(), fn))
        return future

    def shutdown(self, wait: bool = False) -> None:
        """Let the threads finish the calls already queued, then stop (a call made after
        this raises)."""
        if not self._closed:
            self._closed = True
            for _ in self._threads:
                self._calls.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            loop, future, context, fn = call
            if future.cancelled():
                continue
            try:
                result = context.run(fn)
            except BaseException as exc:  # the caller gets it, as from an executor
                _answer(loop, future, None, exc)
            else:
                _answer(loop, future, result, None)


def _answer(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    exc: BaseException | None,
) -> None:
    try:
        loop.call_soon_threadsafe(_settle, future, result, exc)
    except RuntimeError:
        pass  # the loop is closed: nobody is waiting any more


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is None:
        future.set_result(result)
        return
    try:
        future.set_exception(exc)
    except TypeError:  # StopIteration, which a future may not hold
        future.set_exception(RuntimeError(f"the call raised {exc!r}"))
