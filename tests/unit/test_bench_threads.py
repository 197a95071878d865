"""`ops/bench_threads.py` runs and gives both hops' rows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_threads_prints_a_row_per_hop() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "bench_threads.py"), "--rounds", "2",
         "--calls", "400"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and "µs" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["run_in_executor", "LoopThreads"]
    for row in rows:
        cpu = float(row.split("|")[2].split()[0])
        assert cpu > 0
