"""The bench's reading of pg_stat_activity samples (ops/benchmark/pgwaits.py)."""

from __future__ import annotations

from collections import Counter

import pytest

from ops.benchmark.pgwaits import APPEND_PREFIX, GROUPED_PREFIX, Waits, state_of


def test_the_append_prefix_names_the_append_function() -> None:
    assert APPEND_PREFIX.startswith("SELECT ") and APPEND_PREFIX.endswith("xentree_append")


def test_the_grouped_prefix_names_the_grouped_append_function() -> None:
    assert GROUPED_PREFIX.startswith("SELECT ")
    assert GROUPED_PREFIX.endswith("xentree_append_grouped")


@pytest.mark.parametrize(
    ("wait_type", "wait", "appending", "state"),
    [
        ("Lock", "advisory", True, "append: lock"),
        ("IO", "WalSync", True, "append: WAL flush"),
        ("IO", "WALWrite", True, "append: WAL flush"),
        (None, None, True, "append: running"),
        ("Client", "ClientRead", True, "append: other"),
        ("Lock", "advisory", False, "other"),
        (None, None, False, "other"),
    ],
)
def test_each_sample_is_put_in_one_state(
    wait_type: str | None, wait: str | None, appending: bool, state: str
) -> None:
    assert state_of(wait_type, wait, appending) == state


def test_means_and_the_time_per_command_follow_littles_law() -> None:
    waits = Waits(samples=100, seconds=1.0, backends=Counter(
        {"append: lock": 50, "append: WAL flush": 30, "append: running": 20, "other": 10}))
    assert waits.mean("append: lock") == 0.5
    text = waits.describe(commands_per_s=500)
    # 1.0 backend in the append at 500 commands/s: 2 ms per command, 1 ms of it on the lock.
    assert "in the append on average 1.00, per command 2.00 ms" in text
    assert "waiting for the append lock 0.50 (1.00 ms)" in text
    assert "in other statements 0.10" in text and "100 samples" in text


def test_no_samples_means_nothing_not_a_division_by_zero() -> None:
    text = Waits(0, 0.0, Counter()).describe(0)
    assert text.startswith("backends in the append on average 0.00, per command —")
