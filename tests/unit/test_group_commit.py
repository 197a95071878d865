"""GroupCommit: appends that arrive while one is in flight run together, and each caller
hears its own answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from adapters.eventstore.group_commit import GroupCommit


class Conflict(Exception):
    pass


class Store:
    """Runs that record what they were given; `gate` holds the first run_one open."""

    def __init__(self) -> None:
        self.ones: list[int] = []
        self.groups: list[list[int]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.fail_groups = False

    def run_one(self, item: int) -> int:
        if not self.ones:
            self.entered.set()
            assert self.gate.wait(5)
        self.ones.append(item)
        if item < 0:
            raise Conflict(item)
        return item * 10

    def run_many(self, items: Sequence[int]) -> list[int | BaseException]:
        if self.fail_groups:
            raise ConnectionError("the group's transaction failed")
        self.groups.append(list(items))
        return [Conflict(i) if i < 0 else i * 10 for i in items]


def _queue_behind_a_slow_append(
    store: Store, commit: GroupCommit[int, int], items: list[int]
) -> list[object]:
    """Submit 1 and hold it in flight until every item is queued; the answers, in order."""

    def submit(item: int) -> object:
        try:
            return commit.submit(item)
        except Conflict as error:
            return error

    with ThreadPoolExecutor(len(items) + 1) as pool:
        first = pool.submit(submit, 1)
        assert store.entered.wait(5)
        rest = [pool.submit(submit, item) for item in items]
        deadline = time.monotonic() + 5
        while len(commit._queue) < len(items):
            assert time.monotonic() < deadline
            time.sleep(0.001)
        store.gate.set()
        return [first.result(5)] + [f.result(5) for f in rest]


def test_one_alone_runs_alone() -> None:
    store = Store()
    store.gate.set()
    commit = GroupCommit(store.run_one, store.run_many)
    assert commit.submit(4) == 40
    assert (store.ones, store.groups, commit.groups) == ([4], [], 0)


def test_those_that_queue_behind_one_in_flight_run_as_one_group() -> None:
    store = Store()
    commit = GroupCommit(store.run_one, store.run_many)
    answers = _queue_behind_a_slow_append(store, commit, [2, 3, 4, 5])
    assert answers == [10, 20, 30, 40, 50]
    assert store.ones == [1]
    assert sorted(store.groups[0]) == [2, 3, 4, 5] and len(store.groups) == 1
    assert commit.groups == 1


def test_each_caller_hears_its_own_conflict_and_the_others_their_answers() -> None:
    store = Store()
    commit = GroupCommit(store.run_one, store.run_many)
    answers = _queue_behind_a_slow_append(store, commit, [2, -3, 4])
    assert answers[0] == 10 and answers[1] == 20 and answers[3] == 40
    assert isinstance(answers[2], Conflict) and answers[2].args == (-3,)


def test_a_failed_group_runs_each_again_alone() -> None:
    store = Store()
    store.fail_groups = True
    commit = GroupCommit(store.run_one, store.run_many)
    answers = _queue_behind_a_slow_append(store, commit, [2, -3, 4])
    assert answers[0] == 10 and answers[1] == 20 and answers[3] == 40
    assert isinstance(answers[2], Conflict)
    assert sorted(store.ones) == [-3, 1, 2, 4] and store.groups == []
    assert commit.groups == 0


def test_an_error_of_one_alone_is_raised_in_its_caller_and_the_next_runs() -> None:
    store = Store()
    store.gate.set()
    commit = GroupCommit(store.run_one, store.run_many)
    with pytest.raises(Conflict):
        commit.submit(-1)
    assert commit.submit(2) == 20


def test_many_threads_each_get_their_own_answer() -> None:
    def slow_one(item: int) -> int:
        time.sleep(0.001)
        return item * 10

    def slow_many(items: Sequence[int]) -> list[int | BaseException]:
        time.sleep(0.001)
        return [i * 10 for i in items]

    commit = GroupCommit(slow_one, slow_many)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(commit.submit, range(2000)))
    assert answers == [i * 10 for i in range(2000)]
    assert commit.groups > 0
