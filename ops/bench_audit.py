"""Benchmark: the cost of the hash chain on writes, and the speed of chain verification
and of read-model rebuilds, on an embedded PostgreSQL of its own.

    .venv/bin/python ops/bench_audit.py                      # 8 s per run, 4 writer threads
    .venv/bin/python ops/bench_audit.py --seconds 15 --threads 8

Writes are real commands through the application (start a session, one heartbeat, end:
7 events in 3 transactions), run alternately against a database whose recorder chains
every event and one whose recorder does not (the same LiveRecorder calling an append
function without the chain, created in that database only), each run on a fresh database
of the same server, so the two are side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.audit.history import History
from adapters.audit.rebuild import rebuild
from adapters.eventstore import chain
from adapters.eventstore.append import (
    APPEND_CALL,
    APPEND_FUNCTION,
    GROUPED_CALL,
    GROUPED_FUNCTION,
    append_function_ddl,
    grouped_function_ddl,
)
from adapters.eventstore.recorder import LiveRecorder
from adapters.eventstore.schema import infrastructure_env, migrate
from adapters.projector.runner import PROJECTIONS
from application.live import LiveApplication
from application.principal import Principal
from application.settings import Settings, parse_database_url
from ops.stack import EmbeddedPostgres, free_port
from tests.support.clock import Clock

UNCHAINED = "xentree_append_unchained"
UNCHAINED_GROUPED = "xentree_append_unchained_grouped"


class UnchainedRecorder(LiveRecorder):
    """The baseline: everything the recorder does, except extending the chain."""

    append_call = APPEND_CALL.replace(APPEND_FUNCTION, UNCHAINED)
    grouped_call = GROUPED_CALL.replace(GROUPED_FUNCTION, UNCHAINED_GROUPED)


def _install_unchained(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(append_function_ddl(UNCHAINED, chained=False))
        conn.execute(grouped_function_ddl(UNCHAINED_GROUPED, UNCHAINED))


def _database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        ident = sql.Identifier(name)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    p = parse_database_url(admin_url)
    return f"postgresql://{p.user}@{p.host}:{p.port}/{name}"


def _app(settings: Settings, chained: bool) -> LiveApplication:
    env = infrastructure_env(settings)
    if not chained:
        env["APPLICATION_RECORDER_TOPIC"] = "ops.bench_audit:UnchainedRecorder"
    return LiveApplication(settings, env=env)


def _writes(app: LiveApplication, seconds: float, threads: int) -> dict[str, float]:
    commands = [0] * threads
    deadline = time.monotonic() + seconds

    def writer(i: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            p = Principal(tenant_id="bench", user_id=f"u{i}-{n}",
                          scopes=frozenset({"live:read", "live:write"}), credential="bearer")
            clock = Clock()
            sid = msgspec.json.decode(app.start_session(p, "voice", clock).body)["session_id"]
            clock.advance(5)
            app.heartbeat(p, sid, clock)
            app.end_session(p, sid, "client", clock)
            n += 1
            commands[i] += 3

    started = time.monotonic()
    workers = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - started
    return {"commands_per_s": sum(commands) / elapsed}


def _events(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM xentree_live_events").fetchone()
    return int(row[0]) if row else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="xentree-bench-audit-"))
    pg = EmbeddedPostgres(work / "pg", free_port(), log_path=work / "postgres.log")
    admin = pg.start()
    results: dict[str, list[float]] = {"chained": [], "unchained": []}
    try:
        last_chained = ""
        for r in range(args.rounds):
            for mode in ("chained", "unchained"):
                url = _database(admin, f"bench_{mode}_{r}")
                settings = Settings(database_url=url, state_dir=str(work / "state"))
                migrate(settings)
                if mode == "unchained":
                    _install_unchained(url)
                app = _app(settings, mode == "chained")
                try:
                    t = time.monotonic()
                    out = _writes(app, args.seconds, args.threads)
                    events = _events(url)
                    results[mode].append(events / (time.monotonic() - t))
                    print(f"{mode:9} round {r}: {out['commands_per_s']:.0f} commands/s, "
                          f"{results[mode][-1]:.0f} events/s ({events} events)", flush=True)
                finally:
                    app.close()
                if mode == "chained":
                    last_chained = url

        settings = Settings(database_url=last_chained, state_dir=str(work / "state"))
        app = _app(settings, True)
        with psycopg.connect(last_chained, autocommit=True) as conn:
            t = time.monotonic()
            verdict, _ = chain.verify(conn)
            verify_rate = verdict.events / (time.monotonic() - t)
            assert verdict.ok
            rebuilds = {
                name: rebuild(conn, History(conn, app.mapper), name, spec).summary()
                for name, spec in PROJECTIONS.items()
            }
        app.close()
        chained, unchained = (statistics.median(results[m]) for m in ("chained", "unchained"))
        summary: dict[str, Any] = {
            "threads": args.threads,
            "seconds": args.seconds,
            "write_events_per_s_chained": round(chained),
            "write_events_per_s_unchained": round(unchained),
            "chained_over_unchained": round(chained / unchained, 3),
            "verify_events_per_s": round(verify_rate),
            "verified_events": verdict.events,
            "rebuild": {n: {k: r[k] for k in ("events", "rows", "events_per_second")}
                        for n, r in rebuilds.items()},
        }
        print(json.dumps(summary, indent=2))
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
