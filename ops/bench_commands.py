"""Benchmark: the write path in process, with nothing around it: start + end pairs (or
heartbeats) through `LiveApplication` (no HTTP, no pipeline), one thread, on an embedded
PostgreSQL of its own.

    .venv/bin/python ops/bench_commands.py                      # this tree
    .venv/bin/python ops/bench_commands.py --against ../old     # and another checkout, alternating
    .venv/bin/python ops/bench_commands.py --flow heartbeats    # 4 a second on each session

Heartbeats come a quarter of a second apart on each of the 16 users' sessions, as the
bench's wrk load sends them: three in four have no whole second to bill.

Each round runs each tree in a process of its own (its own code: the tree comes first on
the path), 16 users taking turns, a warm-up pass and then a measured pass of `--pairs`
pairs; the table gives each tree's wall time and CPU time (the process's, so the
application's own work, not PostgreSQL's) per pair, median and range over the rounds.
With `--against` the trees alternate in every round, so a drifting machine drifts both.
For another commit: `git worktree add ../old <commit>` (and a link to this `.venv`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
USERS = 16


def child(tree: str, database_url: str, pairs: int, flow: str) -> None:
    """One tree's run: prints `wall_ms cpu_ms` per unit of the measured pass."""
    sys.path.insert(0, tree)
    import msgspec

    from adapters.bootstrap import build_application
    from application.principal import Principal
    from application.settings import Settings

    at = [datetime(2026, 12, 1, tzinfo=UTC)]

    def now() -> datetime:
        return at[0]

    app = build_application(Settings(database_url=database_url))
    who = [Principal(tenant_id="bench-commands", user_id=f"{os.getpid()}-{i}",
                     scopes=frozenset({"live:read", "live:write"}), credential="bearer")
           for i in range(USERS)]
    def pair(i: int) -> None:
        user = who[i % USERS]
        answer = app.start_session(user, "voice", now)
        at[0] += timedelta(seconds=1.1)
        app.end_session(user, msgspec.json.decode(answer.body)["session_id"], "client", now)

    def heartbeat(i: int) -> None:
        if i % USERS == 0:
            at[0] += timedelta(seconds=0.25)
        app.heartbeat(who[i % USERS], sessions[i % USERS], now)

    sessions = [msgspec.json.decode(app.start_session(user, "voice", now).body)["session_id"]
                for user in who] if flow == "heartbeats" else []
    step = heartbeat if sessions else pair
    try:
        for measured in (False, True):
            wall, cpu = time.perf_counter(), time.process_time()
            for i in range(pairs):
                step(i)
            if measured:
                print(f"{1e3 * (time.perf_counter() - wall) / pairs:.4f} "
                      f"{1e3 * (time.process_time() - cpu) / pairs:.4f}")
    finally:
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1500,
                        help="pairs (or heartbeats) per measured pass")
    parser.add_argument("--flow", choices=("pairs", "heartbeats"), default="pairs")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--against", type=Path, help="another checkout to run alternately")
    parser.add_argument("--database-url", help="a PostgreSQL to use (migrated here)")
    parser.add_argument("--child", nargs=2, metavar=("TREE", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.pairs, args.flow)
        return

    sys.path.insert(0, str(ROOT))
    from adapters.eventstore.schema import migrate
    from application.settings import Settings
    from ops.stack import EmbeddedPostgres, free_port

    trees = {"this tree": ROOT}
    if args.against:
        trees[str(args.against)] = args.against.resolve()
    pg = None
    url = args.database_url
    if url is None:
        work = Path(tempfile.mkdtemp(prefix="xentree-bench-commands-"))
        pg = EmbeddedPostgres(work / "pg", free_port(), log_path=work / "postgres.log")
        url = pg.start()
    try:
        migrate(Settings(database_url=url))
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                out = subprocess.run(
                    [sys.executable, __file__, "--pairs", str(args.pairs), "--flow", args.flow,
                     "--child", str(tree), url],
                    env={**os.environ, "PYTHONPATH": str(tree)},
                    capture_output=True, text=True, check=True,
                ).stdout.split()
                runs[name].append((float(out[-2]), float(out[-1])))
    finally:
        if pg is not None:
            pg.stop()
    unit = "pair" if args.flow == "pairs" else "heartbeat"
    what = "start + end pairs" if args.flow == "pairs" else "heartbeats, 4 a second a session"
    print(f"{what} in process, one thread; {args.rounds} rounds of {args.pairs:,} per tree")
    print(f"| tree | wall ms/{unit} (median, range) | CPU ms/{unit} (median, range) |")
    print("|---|---:|---:|")
    for name, values in runs.items():
        wall, cpu = [w for w, _ in values], [c for _, c in values]
        print(f"| {name} | {statistics.median(wall):.3f} ({min(wall):.3f} to {max(wall):.3f}) | "
              f"{statistics.median(cpu):.3f} ({min(cpu):.3f} to {max(cpu):.3f}) |")


if __name__ == "__main__":
    main()
