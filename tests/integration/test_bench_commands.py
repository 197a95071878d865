"""`ops/bench_commands.py` on the test database: a tiny run prints its table, one row per
tree, with positive times (the figures of such a run mean nothing)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_tiny_run_prints_a_row_per_tree(database_url: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "bench_commands.py"), "--database-url",
         database_url, "--pairs", "20", "--rounds", "1", "--against", str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = re.findall(r"^\| (.+?) \| ([\d.]+) \(.*?\) \| ([\d.]+) \(.*?\) \|$", done.stdout, re.M)
    assert [name for name, _, _ in rows] == ["this tree", str(ROOT)]
    assert all(float(wall) > 0 and float(cpu) > 0 for _, wall, cpu in rows)
