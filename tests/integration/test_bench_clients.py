"""`ops/bench_clients.py`: a tiny run starts its own broker, sends and reads every message
with both clients, and prints a row per client and phase (the figures of such a run mean
nothing)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_tiny_run_prints_a_row_per_client_and_phase() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "bench_clients.py"), "--rounds", "1",
         "--messages", "200", "--batch", "20"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = re.findall(r"^\| ([\w-]+) \| (\w+) \| ([\d.]+) \(.*?\) \| ([\d.]+) \(.*?\) \|$",
                      done.stdout, re.M)
    assert [(client, phase) for client, phase, _, _ in rows] == [
        ("kafka-python", "produce"), ("kafka-python", "consume"),
        ("confluent-kafka", "produce"), ("confluent-kafka", "consume"),
    ]
    assert all(float(client_cpu) > 0 for _, _, client_cpu, _ in rows)
