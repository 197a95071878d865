"""`./ops/soak --minutes N`: a mixed workload on a private stack for N minutes, a running
summary every 10 s, then exact agreement of store, Kafka and projections, and every
process's memory at start and end."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.faults.harness import Stack, Workload, running_stack
from tests.faults.test_faults import BASE


def rss_by_process(stack: Stack) -> dict[str, int]:
    assert stack.apps is not None
    sizes: dict[str, int] = {}
    for name in stack.apps.children:
        pid = stack.apps.pid(name)
        if pid is None:
            continue
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
        sizes[name] = sum(p.memory_info().rss for p in tree if p.is_running())
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--users", type=int, default=8)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="xentree-soak-"))
    with running_stack(workdir, BASE) as stack:
        load = Workload(stack, users=args.users, pause=0.02).start()
        time.sleep(10)  # warm up before the first memory reading
        start_rss = rss_by_process(stack)
        began = time.monotonic()
        deadline = began + args.minutes * 60
        while time.monotonic() < deadline:
            time.sleep(10)
            print(
                f"soak {time.monotonic() - began:6.0f}s  commands={load.commands()} "
                f"503={load.unavailable} 5xx={load.server_errors}",
                flush=True,
            )
        load.stop()
        end_rss = rss_by_process(stack)
        report = stack.check_agreement(load, timeout=120)
        print(report.line(f"soak {args.minutes} min"))
        for name in sorted(start_rss):
            a, b = start_rss[name] / 2**20, end_rss.get(name, 0) / 2**20
            print(f"rss {name:10s} start {a:7.1f} MiB  end {b:7.1f} MiB  ({b - a:+.1f})")
        ok = (
            report.found_in_store == report.acknowledged
            and report.events_missing_in_kafka == 0
            and not report.projection_mismatches
            and report.server_errors == 0
        )
        print("soak PASSED" if ok else f"soak FAILED: {report.projection_mismatches[:5]}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
