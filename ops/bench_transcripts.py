"""Benchmark: store and read back a 5,000-entry transcript through the HTTP API.

    .venv/bin/python ops/bench_transcripts.py                # own embedded stack, 5 rounds
    .venv/bin/python ops/bench_transcripts.py --url http://127.0.0.1:8000   # a running stack

Reports, per round, the POST (validation, 12 events in one transaction) and two GETs: the
first with X-Min-Position (includes waiting for the relay and the transcripts projection
to apply the events), the second once caught up (the read alone).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.auth.dev_issuer import DevIssuer
from application.settings import load_settings
from ops.launcher import PROCESSES, AppProcesses, Output, cli_path
from ops.stack import EmbeddedKafka, EmbeddedPostgres, free_port, wait_for_http

ENTRIES = 5_000


def transcript(entries: int, text_chars: int) -> dict[str, Any]:
    start = datetime(2026, 4, 16, 10, 0, tzinfo=UTC)

    def stamp(at: datetime) -> str:
        return at.isoformat().replace("+00:00", "Z")

    return {
        "session_started_at": stamp(start),
        "session_ended_at": stamp(start + timedelta(hours=3)),
        "transcripts": [
            {
                "role": "user" if i % 2 == 0 else "ai",
                "text": (f"turn {i}: " + "lorem ipsum dolor sit amet " * 20)[:text_chars],
                "timestamp": stamp(start + timedelta(seconds=2 * i)),
            }
            for i in range(entries)
        ],
    }


@contextmanager
def embedded_stack() -> Iterator[tuple[str, dict[str, str]]]:
    work = Path(tempfile.mkdtemp(prefix="xentree-bench-"))
    pg = EmbeddedPostgres(work / "pg", free_port(), log_path=work / "postgres.log")
    kafka = EmbeddedKafka(free_port(), log_path=work / "tansu.log")
    port = free_port()
    env = {
        **os.environ,
        "XENTREE_DATABASE_URL": pg.start(),
        "XENTREE_KAFKA_BOOTSTRAP": kafka.start(),
        "XENTREE_STATE_DIR": str(work / "state"),
        "XENTREE_API_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }
    apps: AppProcesses | None = None
    log = (work / "apps.log").open("a", encoding="utf-8")
    try:
        subprocess.run([cli_path(), "migrate"], env=env, check=True, capture_output=True)
        apps = AppProcesses(env, PROCESSES, output=Output(log)).start()
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/healthz", timeout=60)
        yield url, env
    finally:
        if apps is not None:
            apps.stop()
        log.close()
        kafka.stop()
        pg.stop()


def bench(url: str, env: dict[str, str], rounds: int, text_chars: int) -> None:
    issuer = DevIssuer.load_or_create(load_settings(env))
    token = issuer.mint("bench", f"bench-{int(time.time())}", "live:read live:write", 3600)
    headers = {"Authorization": f"Bearer {token}"}
    body = transcript(ENTRIES, text_chars)
    size = len(httpx.Request("POST", url, json=body).content)
    posts, fresh_gets, gets = [], [], []
    with httpx.Client(base_url=url, timeout=60, headers=headers) as client:
        for _ in range(rounds + 1):  # the first round warms up and is not counted
            started = time.perf_counter()
            r = client.post("/api/live/transcripts", json=body)
            post = time.perf_counter() - started
            assert r.status_code == 201, r.text
            tid, position = r.json()["transcript_id"], r.headers["X-Event-Position"]
            started = time.perf_counter()
            while True:
                g = client.get(
                    f"/api/live/transcripts/{tid}", headers={"X-Min-Position": position}
                )
                if g.status_code != 503:
                    break
            fresh = time.perf_counter() - started
            assert g.status_code == 200 and len(g.json()["transcripts"]) == ENTRIES, g.text
            started = time.perf_counter()
            g = client.get(f"/api/live/transcripts/{tid}")
            get = time.perf_counter() - started
            assert g.status_code == 200
            posts.append(post)
            fresh_gets.append(fresh)
            gets.append(get)
    posts, fresh_gets, gets = posts[1:], fresh_gets[1:], gets[1:]

    def ms(values: list[float]) -> str:
        return (
            f"median {statistics.median(values) * 1000:7.1f} ms   "
            f"min {min(values) * 1000:7.1f} ms   max {max(values) * 1000:7.1f} ms"
        )

    print(f"{ENTRIES} entries, {text_chars} chars each, request body {size / 1024:.0f} KiB, "
          f"{rounds} rounds")
    print(f"POST /api/live/transcripts                     {ms(posts)}")
    print(f"GET  /api/live/transcripts/{{id}} (min position) {ms(fresh_gets)}")
    print(f"GET  /api/live/transcripts/{{id}} (caught up)    {ms(gets)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running API (default: start an embedded stack)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--text-chars", type=int, default=200)
    args = parser.parse_args()
    if args.url:
        bench(args.url, dict(os.environ), args.rounds, args.text_chars)
        return 0
    with embedded_stack() as (url, env):
        bench(url, env, args.rounds, args.text_chars)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
