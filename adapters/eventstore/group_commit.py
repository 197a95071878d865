"""Group commit for the appends of one process.

Appenders serialise on the append lock (adapters/eventstore/append.py), and PostgreSQL
releases a transaction's locks only once its commit record is flushed: each append holds
the lock through its own WAL flush, so appends alone commit one flush at a time, and under
load every command waits for the flushes of those ahead of it.

`GroupCommit` lets the appends that arrive while one is in flight go together: the first
caller to find no append in flight leads, takes every append waiting at that moment and
runs them (`run_one` for one alone, `run_many` for several, in one transaction and so one
flush); the callers that came meanwhile wait for the leader's result, and the next of
them to find nothing in flight leads the next group. Under no load a group is one append,
run exactly as before; under load a group holds what queued during the last flush
(about six appends a group in the bench's start + end pairs, where PostgreSQL's CPU per
pair fell from 1.3 to 0.8 ms: README, "Where the targets stand").

Waiters are woken one by one (each slot has its own lock), never all at once: a herd of
threads woken to find their group not yet run cost more interpreter time than grouping
saved (in process, 8 threads of pairs: 630 pairs/s against 755 without grouping; 755 with
the one-by-one wake-up, at 8 % less CPU a pair).

`run_many` answers each append on its own (its positions, or the exception that append
alone raised). If it raises, the group's transaction did not commit, and each append is
run again alone, so a failure is always the failing append's own. (Were the connection
lost in the very commit, which did commit, an append run again conflicts with itself and
its command is decided again from the store: what the recorder's retry does today.)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


class _Slot(Generic[T, R]):
    __slots__ = ("done", "error", "item", "result", "wake")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = False
        self.result: R | None = None
        self.error: BaseException | None = RuntimeError("the group's leader was interrupted")
        # Held until its caller is woken: its group ran, or it is to lead the next.
        self.wake = threading.Lock()
        self.wake.acquire()

    def outcome(self) -> R:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class GroupCommit(Generic[T, R]):
    def __init__(
        self,
        run_one: Callable[[T], R],
        run_many: Callable[[Sequence[T]], Sequence[R | BaseException]],
    ) -> None:
        self._run_one = run_one
        self._run_many = run_many
        self._mutex = threading.Lock()
        self._queue: list[_Slot[T, R]] = []
        self._busy = False
        # For tests and benchmarks: groups of more than one append committed, and the
        # appends they held.
        self.groups = 0
        self.grouped = 0

    def submit(self, item: T) -> R:
        """Run `item` (alone or in a group) and return its result or raise its error."""
        slot: _Slot[T, R] = _Slot(item)
        with self._mutex:
            self._queue.append(slot)
            leads = not self._busy
            self._busy = True
        if not leads:
            # Woken once: with its answer, or (the first still waiting when a group ends)
            # to lead the next group. Only the woken thread wakes: no herd for the GIL.
            slot.wake.acquire()
            if slot.done:
                return slot.outcome()
        with self._mutex:
            batch, self._queue = self._queue, []
        try:
            self._run(batch)
        finally:
            with self._mutex:
                for each in batch:
                    each.done = True
                following = self._queue[0] if self._queue else None
                self._busy = following is not None
            for each in batch:
                if each is not slot:
                    each.wake.release()
            if following is not None:
                following.wake.release()
        return slot.outcome()

    def _run(self, batch: list[_Slot[T, R]]) -> None:
        if len(batch) > 1:
            try:
                outcomes = self._run_many([slot.item for slot in batch])
            except Exception:  # nothing committed: each runs again alone
                log.warning("a group of %d appends failed; each runs again alone",
                            len(batch), exc_info=True)
            else:
                if len(outcomes) != len(batch):
                    raise RuntimeError("run_many answered a different number of appends")
                self.groups += 1
                self.grouped += len(batch)
                for slot, outcome in zip(batch, outcomes, strict=True):
                    if isinstance(outcome, BaseException):
                        slot.error = outcome
                    else:
                        slot.result, slot.error = outcome, None
                return
        for slot in batch:
            try:
                slot.result, slot.error = self._run_one(slot.item), None
            except Exception as error:
                slot.error = error
