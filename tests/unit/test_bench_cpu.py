"""The bench's CPU accounting (ops/benchmark/cpu.py): parsing /proc, and each process
counted towards its nearest named ancestor."""

from __future__ import annotations

import os

import pytest

from ops.benchmark import cpu
from ops.benchmark.cpu import OTHER, CpuMeter, Sample, Usage


def stat_line(pid: int, name: str, ppid: int, utime: int, stime: int, cutime: int = 0,
              cstime: int = 0) -> str:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime ...
    return (f"{pid} ({name}) S {ppid} 1 1 0 -1 4194304 10 0 0 0 "
            f"{utime} {stime} {cutime} {cstime} 20 0 1 0 100 1000 50")


def test_a_stat_line_gives_the_parent_and_all_four_cpu_times() -> None:
    ppid, seconds = cpu.parse_stat(stat_line(42, "python", 7, 100, 50, 30, 20))
    assert ppid == 7
    assert seconds == pytest.approx(200 / cpu.TICK)


def test_a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() -> None:
    ppid, seconds = cpu.parse_stat(stat_line(42, "x) (y z", 9, 10, 5))
    assert (ppid, seconds) == (9, pytest.approx(15 / cpu.TICK))


def test_the_machine_line_counts_busy_time_and_leaves_steal_out() -> None:
    #            user nice system idle iowait irq softirq steal guest guest_nice
    text = "cpu  100 10 40 800 50 5 5 300 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
    busy, total = cpu.parse_machine(text)
    assert busy == pytest.approx(160 / cpu.TICK)
    assert total == pytest.approx(1010 / cpu.TICK)


def test_each_process_counts_towards_its_nearest_named_ancestor() -> None:
    table = {
        1: (0, 5.0),  # init: under no root
        100: (1, 1.0),  # the bench (load client)
        101: (100, 2.0),  # wrk, the bench's child
        200: (100, 3.0),  # postgres, also the bench's child but a root of its own
        201: (200, 0.5),  # a backend
        202: (201, 0.25),  # a grandchild
        300: (1, 9.0),  # someone else's process
    }
    spent = cpu.by_root(table, {"load client": 100, "postgres": 200, "gone": 999})
    assert spent == {"load client": 3.0, "postgres": 3.75, "gone": 0.0}


def test_a_parent_loop_in_the_table_ends_the_walk() -> None:
    table = {10: (11, 1.0), 11: (10, 1.0)}
    assert cpu.by_root(table, {"x": 12}) == {"x": 0.0}


def test_usage_splits_the_machines_busy_time_and_calls_the_rest_other() -> None:
    first = Sample(at=10.0, spent={"api": 1.0, "postgres": 2.0}, busy=100.0, total=400.0)
    last = Sample(at=20.0, spent={"api": 6.0, "postgres": 4.0}, busy=110.0, total=420.0)
    usage = Usage.between(first, last, cores=2)
    assert usage.spent == {"api": 5.0, "postgres": 2.0, OTHER: 3.0}
    assert usage.cores_busy == pytest.approx(1.0)
    assert usage.per_unit_ms(1000) == {"api": 5.0, "postgres": 2.0, OTHER: 3.0}
    text = usage.describe(1000, "pair")
    assert text.startswith("CPU ms per pair: api 5.00, other 3.00, postgres 2.00; total 10.00")
    assert "1.00 of 2 cores busy over 10 s" in text
    assert usage.describe(0, "pair") == "no work done"


def test_a_process_that_used_less_than_the_machine_saw_never_goes_negative() -> None:
    first = Sample(at=0.0, spent={"api": 5.0}, busy=10.0, total=20.0)
    last = Sample(at=1.0, spent={"api": 4.0}, busy=10.5, total=22.0)  # restarted: counter reset
    usage = Usage.between(first, last, cores=2)
    assert usage.spent == {"api": 0.0, OTHER: 0.5}


def test_the_meter_counts_this_process_burning_cpu() -> None:
    with CpuMeter(lambda: {"me": os.getpid(), "nobody": None}) as meter:
        spin = 0
        while meter.usage is None and spin < 3_000_000:
            spin += 1
    assert meter.usage is not None
    assert set(meter.usage.spent) == {"me", OTHER}
    assert meter.usage.spent["me"] > 0
    assert meter.usage.cores_busy > 0
