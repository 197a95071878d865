"""Drive Debian's `wrk` with rotate.lua and read back its summary."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("rotate.lua")

# (method, path, bearer token or "", JSON body or "")
WrkRequest = tuple[str, str, str, str]


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    failed: int  # connect/read/write errors, timeouts and non-2xx/3xx answers
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, float | int]:
        return {
            "count": self.requests,
            "seconds": round(self.seconds, 3),
            "rate": round(self.rate, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "failed": self.failed,
        }


def available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    port: int,
    requests: Sequence[WrkRequest],
    seconds: int,
    connections: int,
    threads: int = 1,
) -> WrkResult:
    with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as f:
        for method, path, token, body in requests:
            f.write(f"{method}\t{path}\t{token}\t{body}\n")
        lines = f.name
    try:
        proc = subprocess.run(
            [
                "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, seconds)}s",
                "--timeout", "10s", "-s", str(SCRIPT), f"http://127.0.0.1:{port}",
                "--", lines,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=seconds + 60,
        )
    finally:
        Path(lines).unlink(missing_ok=True)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            d = json.loads(line.removeprefix("BENCH_JSON "))
            return WrkResult(
                requests=d["requests"],
                seconds=d["duration_us"] / 1e6,
                failed=d["connect_errors"] + d["read_errors"] + d["write_errors"]
                + d["status_errors"] + d["timeouts"],
                p50_ms=d["p50_us"] / 1000,
                p99_ms=d["p99_us"] / 1000,
            )
    raise RuntimeError(f"wrk gave no summary (exit {proc.returncode}): {proc.stderr[-2000:]}")
