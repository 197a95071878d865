"""Where a load's CPU goes, process by process (the info rows after heartbeat and pairs).

Throughput on a 2-core machine is a CPU budget shared by the API, PostgreSQL, the relay,
the projector, the broker and the load client. This reads each process's CPU time from
`/proc` when a measured run starts and when it ends, and the machine's busy time from
`/proc/stat`, and says what each process spent per unit of work (a command, a pair) and
how many cores were busy. Reading `/proc` twice costs the load nothing it would notice,
so the measured run itself is the one accounted.

A process counts towards the nearest of its ancestors (or itself) that is a named root:
PostgreSQL's backends are the postmaster's children, wrk is the bench's. "other" is the
machine's busy time that no named process accounts for (kernel threads, anything else
running on the machine).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
OTHER = "other"


def parse_stat(text: str) -> tuple[int, float]:
    """(parent pid, CPU seconds) from a `/proc/<pid>/stat` line: user and system time,
    the process's own and that of its children it has reaped (a wrk that ends within the
    run moves its time to the bench's)."""
    # The command name is in parentheses and may itself hold spaces or parentheses.
    fields = text.rsplit(")", 1)[1].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return ppid, (utime + stime + cutime + cstime) / TICK


def parse_machine(text: str) -> tuple[float, float]:
    """(busy, total) CPU seconds over all cores from `/proc/stat`'s first line. Steal
    (time the hypervisor gave another guest) counts as neither."""
    values = [int(v) for v in text.split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq = values[:7]
    busy = user + nice + system + irq + softirq
    return busy / TICK, (busy + idle + iowait) / TICK


def processes() -> dict[int, tuple[int, float]]:
    """Every live process: pid -> (parent pid, CPU seconds)."""
    table: dict[int, tuple[int, float]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            table[int(entry.name)] = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # gone between the listing and the read
    return table


def by_root(table: Mapping[int, tuple[int, float]], roots: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds per named root, each process counted towards its nearest named
    ancestor (itself included); processes under no root are left out."""
    names = {pid: name for name, pid in roots.items()}
    owner: dict[int, str | None] = {}

    def find(pid: int) -> str | None:
        path: list[int] = []
        while pid not in owner:
            if pid in names:
                owner[pid] = names[pid]
                break
            entry = table.get(pid)
            if entry is None or pid <= 1 or pid in path:  # the top, or a torn read's loop
                owner[pid] = None
                break
            path.append(pid)
            pid = entry[0]
        for p in path:
            owner[p] = owner[pid]
        return owner[pid]

    spent = dict.fromkeys(roots, 0.0)
    for pid, (_ppid, cpu) in table.items():
        name = find(pid)
        if name is not None:
            spent[name] += cpu
    return spent


@dataclass
class Sample:
    at: float
    spent: dict[str, float]
    busy: float
    total: float


def sample(roots: Mapping[str, int]) -> Sample:
    busy, total = parse_machine((PROC / "stat").read_text())
    return Sample(time.monotonic(), by_root(processes(), roots), busy, total)


@dataclass
class Usage:
    """CPU seconds per process group over a run, and the machine's over the same run."""

    seconds: float
    spent: dict[str, float]  # the named groups, then OTHER
    cores_busy: float
    cores: int

    @classmethod
    def between(cls, first: Sample, last: Sample, cores: int) -> Usage:
        spent = {
            name: max(0.0, last.spent[name] - first.spent.get(name, 0.0)) for name in last.spent
        }
        busy = max(0.0, last.busy - first.busy)
        spent[OTHER] = max(0.0, busy - sum(spent.values()))
        seconds = max(last.at - first.at, 1e-9)
        return cls(seconds, spent, busy / seconds, cores)

    @property
    def total(self) -> float:
        return sum(self.spent.values())

    def per_unit_ms(self, units: int) -> dict[str, float]:
        return {name: s / units * 1000 for name, s in self.spent.items()} if units else {}

    def describe(self, units: int, unit: str) -> str:
        if not units:
            return "no work done"
        each = self.per_unit_ms(units)
        parts = ", ".join(
            f"{name} {ms:.2f}" for name, ms in sorted(each.items(), key=lambda kv: -kv[1])
            if ms >= 0.005
        )
        return (
            f"CPU ms per {unit}: {parts}; total {self.total / units * 1000:.2f} ms; "
            f"{self.cores_busy:.2f} of {self.cores} cores busy over {self.seconds:.0f} s"
        )


class CpuMeter:
    """`with CpuMeter(roots) as meter: <load>`, then `meter.usage`. `roots` is asked for
    the named process ids when the run starts (a process restarted since is found)."""

    def __init__(self, roots: Callable[[], Mapping[str, int | None]]) -> None:
        self._roots = roots
        self._named: dict[str, int] = {}
        self._first: Sample | None = None
        self.usage: Usage | None = None

    def __enter__(self) -> CpuMeter:
        self._named = {name: pid for name, pid in self._roots().items() if pid is not None}
        self._first = sample(self._named)
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._first is not None
        self.usage = Usage.between(self._first, sample(self._named), os.cpu_count() or 1)
