"""`./ops/bench [--quick]`: every scenario beside its anchor, measured in the same run on
the same PostgreSQL and broker, written to ops/results/ (markdown and JSON).

Starts its own stack (embedded PostgreSQL and Tansu on free ports, migrate, the API, relay,
projectors and reaper as real processes) unless --database-url / --kafka-bootstrap are
given (then it works in a database and topic of its own there). Features that other work
adds (integration verify, projection rebuild, the realtime bridge) are measured when the
tree has them (OpenAPI document, CLI help) and reported "not available" otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psycopg
from psycopg import sql

from adapters.auth.dev_issuer import DevIssuer
from application.settings import DatabaseParams, Settings, load_settings, parse_database_url
from ops.benchmark import anchors, httpload, preload, report, wrk
from ops.benchmark.cpu import CpuMeter
from ops.benchmark.httpload import Connection, LoadResult, Response, build_request
from ops.benchmark.pgwaits import WaitSampler
from ops.benchmark.report import Row
from ops.benchmark.watermark import WatermarkPoller, lags
from ops.launcher import PROCESSES, AppProcesses, Output, cli_path
from ops.stack import EmbeddedKafka, EmbeddedPostgres, free_port, wait_for_http

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "ops" / "results"
HEARTBEAT_USERS = 256
ADMIN_SCOPE = "integration:manage integration:verify live:read"


@dataclass(frozen=True)
class Plan:
    """How long each part runs."""

    anchor_s: float
    load_s: int
    lag_s: float
    growth_s: float
    growth_levels: tuple[int, ...]
    catch_up_timeout_s: float
    connections: int
    pair_workers: int
    sockets: int = 500


QUICK = Plan(2, 4, 5, 3, (10_000, 100_000), 90, 16, 8)
FULL = Plan(10, 20, 20, 8, (10_000, 100_000, 1_000_000), 600, 32, 16)
# Every row, in seconds, for the bench's own test: the figures mean nothing.
SMOKE = Plan(0.3, 1, 1, 0.5, (500, 1_000), 60, 4, 2, sockets=10)


def say(text: str) -> None:
    print(f"bench | {text}", flush=True)


# ---- the stack ----------------------------------------------------------------------------


@dataclass
class Stack:
    env: dict[str, str]
    settings: Settings
    port: int
    apps: AppProcesses
    work: Path
    pg: EmbeddedPostgres | None = None
    kafka: EmbeddedKafka | None = None

    @property
    def conninfo(self) -> str:
        return parse_database_url(self.settings.database_url).conninfo()

    def cpu_roots(self) -> dict[str, int | None]:
        """The processes whose CPU the info rows account (ops/benchmark/cpu.py); servers
        given by URL are not ours to count."""
        return {
            "api": self.apps.pid("api"),
            "postgres": self.pg.pid if self.pg else None,
            "relay": self.apps.pid("relay"),
            "projector": self.apps.pid("projector"),
            "tansu": self.kafka.pid if self.kafka else None,
            "reaper": self.apps.pid("reaper"),
            "engine": self.apps.pid("engine"),
            "realtime": self.apps.pid("realtime"),
            "load client": os.getpid(),
        }


@contextmanager
def stack(args: argparse.Namespace, work: Path) -> Iterator[Stack]:
    with ExitStack() as stop:
        database_url = args.database_url
        pg: EmbeddedPostgres | None = None
        kafka: EmbeddedKafka | None = None
        if database_url:
            database_url = stop.enter_context(_scratch_database(database_url))
        else:
            pg = EmbeddedPostgres(work / "pg", free_port(), log_path=work / "postgres.log")
            database_url = pg.start()
            stop.callback(pg.stop)
        bootstrap = args.kafka_bootstrap
        if not bootstrap:
            kafka = EmbeddedKafka(free_port(), log_path=work / "tansu.log")
            bootstrap = kafka.start()
            stop.callback(kafka.stop)
        port = free_port()
        env = {
            **os.environ,
            "XENTREE_DATABASE_URL": database_url,
            "XENTREE_KAFKA_BOOTSTRAP": bootstrap,
            "XENTREE_KAFKA_TOPIC": f"xentree.bench.{secrets.token_hex(4)}",
            "XENTREE_STATE_DIR": str(work / "state"),
            "XENTREE_API_PORT": str(port),
            "XENTREE_API_WORKERS": str(args.workers),
            # Long sessions, a big allowance and no idle reaping: the load decides nothing.
            "XENTREE_IDLE_TIMEOUT_SECONDS": "3600",
            "XENTREE_PLAN_FREE_SECONDS": "100000000",
            "XENTREE_MAX_SESSION_SECONDS": "2592000",
            "XENTREE_RATE_LIMIT_VERIFY": "1000000000",
            "PYTHONUNBUFFERED": "1",
        }
        subprocess.run([cli_path(), "migrate"], env=env, check=True, capture_output=True)
        log = stop.enter_context((work / "apps.log").open("a", encoding="utf-8"))
        apps = AppProcesses(env, PROCESSES, output=Output(log), autorestart=False).start()
        stop.callback(apps.stop)
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=90)
        yield Stack(env, load_settings(env), port, apps, work, pg, kafka)


@contextmanager
def _scratch_database(server_url: str) -> Iterator[str]:
    db = parse_database_url(server_url)
    name = f"xentree_bench_{secrets.token_hex(4)}"
    with psycopg.connect(db.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    auth = db.user + (f":{db.password}" if db.password else "")
    try:
        yield f"postgresql://{auth}@{db.host}:{db.port}/{name}"
    finally:
        with psycopg.connect(db.conninfo(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def watermark(conninfo: str, projection: str = "quota") -> tuple[int, int]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(min(position), 0) FROM projection_partitions "
            "WHERE projection = %s",
            (projection,),
        ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def wait_for_watermark(conninfo: str, position: int, timeout: float) -> float | None:
    """Seconds until the quota projection passed `position` (None on timeout)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        partitions, mark = watermark(conninfo)
        if partitions and mark >= position:
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def settle(conninfo: str) -> None:
    """After a bulk load: write the dirty buffers out and refresh the planner's statistics
    now, so the growth figures measure the grown store, not the checkpoint and autovacuum
    storm the load itself set off (a store that grows by commands does that gradually)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        conn.execute("VACUUM (ANALYZE) xentree_live_events, event_chain, rm_quota, rm_sessions")


def bare_server(stack_: Stack, public_x: str, workers: int,
                save_db: DatabaseParams | None = None) -> subprocess.Popen[bytes]:
    """The bare Litestar anchors under the API's server settings (see adapters/cli.py);
    with `save_db`, also the create-and-save anchor behind HTTP on that database."""
    port = free_port()
    save = {"BENCH_SAVE_DB": msgspec.json.encode(save_db).decode()} if save_db else {}
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", "ops.benchmark.bare:app", "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--log-level", "warning",
        ],
        cwd=ROOT,
        env={**stack_.env, **save, "BENCH_PUBLIC_X": public_x, "PYTHONPATH": str(ROOT)},
        stdout=(stack_.work / "bare.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    proc.port = port  # type: ignore[attr-defined]
    wait_for_http(f"http://127.0.0.1:{port}/json", timeout=30)
    return proc


# ---- features present in the tree -----------------------------------------------------


def cli_help(*words: str) -> str | None:
    proc = subprocess.run(
        [cli_path(), *words, "--help"], capture_output=True, text=True, check=False, timeout=60
    )
    return proc.stdout if proc.returncode == 0 else None


def cli_commands() -> set[str]:
    text = cli_help() or ""
    # argparse lists the subcommands as {a,b,c}.
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and "}" in line:
            return set(line[1 : line.index("}")].split(","))
    return set()


# ---- helpers ------------------------------------------------------------------------------


def row_from(group: str, name: str, result: LoadResult | wrk.WrkResult, **kw: Any) -> Row:
    p50: float | None
    p99: float | None
    if isinstance(result, wrk.WrkResult):
        p50, p99, count, failed = result.p50_ms, result.p99_ms, result.requests, result.failed
    else:
        p50, p99 = result.percentile_ms(50), result.percentile_ms(99)
        count, failed = result.count, result.failed
    return Row(group, name, rate=result.rate, p50_ms=p50, p99_ms=p99, count=count,
               failed=failed, **kw)


def beside(row: Row, anchor: Row) -> Row:
    """The row's throughput as a ratio of the anchor's, with no target of its own."""
    row.anchor = anchor.name
    if row.rate is not None and anchor.rate:
        row.ratio = row.rate / anchor.rate
    return row


def versus(row: Row, anchor: Row, at_least: float) -> Row:
    beside(row, anchor)
    if row.ratio is not None:
        row.passed = row.ratio >= at_least
    row.target = f"≥ {at_least:g}x anchor"
    return row


def not_available(group: str, name: str, why: str, target: str) -> Row:
    return Row(group, name, unit="", target=target, status="not available", note=why)


def mint_tokens(issuer: DevIssuer, prefix: str, n: int, scope: str) -> list[str]:
    return [issuer.mint("bench", f"{prefix}-{i}", scope, 24 * 3600) for i in range(n)]


def start_sessions(port: int, tokens: list[str]) -> list[str]:
    async def go() -> list[str]:
        sem = asyncio.Semaphore(8)

        async def one(token: str) -> str:
            async with sem:
                conn = await Connection.open(port)
                try:
                    r = await conn.send(build_request(
                        "POST", "/api/live/session/start",
                        {"Authorization": f"Bearer {token}"}, b'{"session_type":"voice"}',
                    ))
                finally:
                    conn.close()
            if r.status != 201:
                raise RuntimeError(f"session start answered {r.status}: {r.body[:300]!r}")
            return str(json.loads(r.body)["session_id"])

        return list(await asyncio.gather(*(one(t) for t in tokens)))

    import uvloop

    return uvloop.run(go())


# ---- the run ------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, plan: Plan, st: Stack) -> None:
        self.args = args
        self.plan = plan
        self.st = st
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.issuer = DevIssuer.load_or_create(st.settings)
        self.db = parse_database_url(st.settings.database_url)
        self.anchor: dict[str, Row] = {}
        # Later scenarios size their load from these when they have run.
        self.hb = Row("scenario", "heartbeat through HTTP", unit="req/s")
        self.quota_row = Row("scenario", "GET /api/live/quota", unit="req/s")

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        rate = f"{row.rate:,.0f} {row.unit}" if row.rate is not None else "—"
        p99 = f"p99 {row.p99_ms:.1f} ms" if row.p99_ms is not None else ""
        extra = f" ratio {row.ratio:.2f}" if row.ratio is not None else ""
        say(f"{row.group:<8} {row.name:<48} {rate:>16} {p99:>16}{extra} {row.result()}"
            f"{' — ' + row.note if row.note else ''}")
        return row

    # — preparation —

    def prepare(self) -> None:
        say("preparing users and sessions")
        self.hb_tokens = mint_tokens(self.issuer, "hb", HEARTBEAT_USERS, "live:read live:write")
        self.hb_sessions = start_sessions(self.st.port, self.hb_tokens)
        self.pair_tokens = mint_tokens(
            self.issuer, "pair", self.plan.pair_workers, "live:read live:write"
        )
        openapi = httpx.get(f"http://127.0.0.1:{self.st.port}/schema/openapi.json", timeout=30)
        self.paths = set(openapi.json().get("paths", {}))
        self.commands = cli_commands()
        self.verify_token: str | None = None
        self.admin_token = self.issuer.mint("bench", "admin", ADMIN_SCOPE, 24 * 3600)
        if "/api/integration/verify" in self.paths:
            r = httpx.post(
                f"http://127.0.0.1:{self.st.port}/api/integration/grant",
                headers={"Authorization": f"Bearer {self.admin_token}"},
                json={"subject": "embed", "scopes": ["live:read"], "ttl_seconds": 600},
                timeout=30,
            )
            if r.status_code != 201:
                raise RuntimeError(f"integration grant answered {r.status_code}: {r.text}")
            self.verify_token = r.json()["token"]
        partitions, _ = watermark(self.st.conninfo)
        deadline = time.monotonic() + 60
        while partitions == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            partitions, _ = watermark(self.st.conninfo)

    # — anchors —

    def anchors(self) -> None:
        p = self.plan
        adb = anchors.anchor_database(self.db)
        self.fsync = anchors.fsync_setting(adb)
        say("anchors: eventsourcing loops, INSERT loop, kafka-python produce loop")
        for key, name, fn in (
            ("create", "eventsourcing create-and-save loop", anchors.es_create_and_save),
            ("get", "eventsourcing get-and-save loop", anchors.es_get_and_save),
            ("insert", "autocommit INSERT loop", anchors.insert_loop),
        ):
            with CpuMeter(self.st.cpu_roots) as meter:
                res = fn(adb, p.anchor_s)
            self.anchor[key] = self.add(row_from("anchor", name, res, unit="/s",
                                                 note="one thread"))
            if key == "create":
                self._cpu_row(name, meter, res.count, "iteration")
        res = anchors.kafka_produce_loop(self.st.settings.kafka_bootstrap, p.anchor_s)
        self.anchor["kafka"] = self.add(Row(
            "anchor", "kafka-python produce loop", unit="msg/s", rate=res.rate,
            count=res.count, note="200 B messages, acks=1, flush included",
        ))
        token = self.verify_token or self.hb_tokens[0]
        public_x = self._public_x(token)
        self.bare = bare_server(self.st, public_x, self.args.workers, adb)
        bport: int = self.bare.port  # type: ignore[attr-defined]
        get_json = [("GET", "/json", "", "")]
        wrk.run_wrk(bport, get_json, 1, p.connections)  # warm
        self.anchor["json"] = self.add(row_from(
            "anchor", "bare Litestar JSON endpoint", wrk.run_wrk(bport, get_json, p.load_s,
                                                                 p.connections),
            note="wrk",
        ))
        post_verify = [("POST", "/verify", "", json.dumps({"token": token}))]
        self.anchor["ed25519"] = self.add(row_from(
            "anchor", "bare Litestar Ed25519 verify endpoint",
            wrk.run_wrk(bport, post_verify, p.load_s, p.connections), note="wrk",
        ))
        # The asyncio client's own ceiling, against the cheapest endpoint there is.
        capacity = httpload.run(httpload.closed_loop(
            bport, httpload.request_flow([build_request("GET", "/json")]), p.connections,
            min(3.0, p.load_s),
        ))
        self.add(row_from("info", "asyncio load client against the bare JSON endpoint",
                          capacity, note="the client's ceiling"))
        self._saves_behind_http(bport)
        self.bare.terminate()
        self.bare.wait(10)

    def _saves_behind_http(self, bport: int) -> None:
        """The pairs' load against the bare endpoint's `POST /save` (ops/benchmark/bare.py):
        what a pair would come to if each of its commands cost no more than the anchor's
        trivial save, run as the API runs commands, with nothing else (no credential,
        domain or pipeline). Info beside the pairs' target, not a target of its own."""
        p = self.plan
        save = build_request("POST", "/save", {}, b"{}")

        async def flow(conn: Connection, _worker: int, _i: int) -> list[int]:
            return [(await conn.send(save)).status, (await conn.send(save)).status]

        def load(seconds: float) -> LoadResult:
            return httpload.run(httpload.closed_loop(bport, flow, p.pair_workers, seconds))

        load(min(1.0, p.load_s))  # warm: the pool's connections, the threads
        bare_pid = self.bare.pid
        with CpuMeter(lambda: {**self.st.cpu_roots(), "bare": bare_pid}) as meter:
            res = load(p.load_s)
        self._beside_pairs(
            "two create-and-save anchor saves behind the bare Litestar endpoint, as a pair",
            res, meter, f"{p.pair_workers} clients in parallel, the API's command threads and "
                        "pool; no credential, domain or pipeline")

    def _public_x(self, token: str) -> str:
        """The `x` of the key that signed `token` (integration JWKS, or the dev issuer)."""
        if self.verify_token and token == self.verify_token:
            r = httpx.get(f"http://127.0.0.1:{self.st.port}/api/integration/jwks",
                          params={"tenantId": "bench"}, timeout=30)
            r.raise_for_status()
            return str(r.json()["keys"][0]["x"])
        return self.issuer.public_jwk()["x"]

    # — scenarios —

    def _hb_requests(self) -> list[wrk.WrkRequest]:
        return [
            ("POST", "/api/live/session/heartbeat", t, json.dumps({"session_id": s}))
            for t, s in zip(self.hb_tokens, self.hb_sessions, strict=True)
        ]

    def _hb_raw(self) -> list[bytes]:
        return [
            build_request("POST", "/api/live/session/heartbeat",
                          {"Authorization": f"Bearer {t}"},
                          json.dumps({"session_id": s}).encode())
            for t, s in zip(self.hb_tokens, self.hb_sessions, strict=True)
        ]

    def heartbeat(self) -> None:
        p = self.plan
        requests = self._hb_requests()
        wrk.run_wrk(self.st.port, requests, 1, p.connections)  # warm

        def load() -> wrk.WrkResult:
            return wrk.run_wrk(self.st.port, requests, p.load_s, p.connections)

        with CpuMeter(self.st.cpu_roots) as meter:
            res = load()
        self._profiled("heartbeat", load)
        self.hb = self.add(versus(row_from("scenario", "heartbeat through HTTP", res,
                                           note="wrk, throughput"),
                                  self.anchor["get"], 1.0))
        self._cpu_row("heartbeat through HTTP", meter, res.requests, "heartbeat")
        self._pg_waits("heartbeat through HTTP, wrk", 1, lambda: load().rate)
        self._settle_pipeline()
        half = max(10.0, res.rate / 2)
        raw = self._hb_raw()
        half_res = httpload.run(httpload.open_loop(
            self.st.port, half, p.load_s, lambda i: raw[i % len(raw)]
        ))
        row = row_from("scenario", f"heartbeat p99 at half load ({half:,.0f}/s)", half_res,
                       note=f"open loop; {half_res.dropped} dropped{refused(half_res)}")
        row.target = "p99 ≤ 25 ms"
        row.passed = row.p99_ms is not None and row.p99_ms <= 25 and row.failed == 0
        self.add(row)

    def pairs(self) -> None:
        p = self.plan
        tokens = [f"Bearer {t}" for t in self.pair_tokens]

        async def flow(conn: Connection, worker: int, _i: int) -> list[int]:
            auth = {"Authorization": tokens[worker]}
            r = await conn.send(build_request("POST", "/api/live/session/start", auth,
                                              b'{"session_type":"voice"}'))
            if r.status != 201:
                return [r.status]
            sid = json.loads(r.body)["session_id"]
            e = await conn.send(build_request(
                "POST", "/api/live/session/end", auth,
                json.dumps({"session_id": sid}).encode(),
            ))
            return [r.status, e.status]

        def load() -> LoadResult:
            return httpload.run(httpload.closed_loop(self.st.port, flow, p.pair_workers,
                                                     p.load_s))

        with CpuMeter(self.st.cpu_roots) as meter:
            res = load()
        self.add(versus(row_from("scenario", "start + end pairs", res, unit="pairs/s",
                                 note=f"{p.pair_workers} users in parallel"),
                        self.anchor["create"], 0.5))
        self._cpu_row("start + end pairs", meter, res.count, "pair")
        self._pg_waits("start + end pairs", 2, lambda: load().rate)
        self._profiled("pairs", load)
        self._pairs_without_pipeline(load)

    def _pairs_without_pipeline(self, load: Callable[[], LoadResult]) -> None:
        """An extra run of the pairs with the pipeline (relay, projector, reaper, realtime
        bridge) stopped by SIGSTOP: what the API and PostgreSQL make of the two cores
        alone. Resumed afterwards, and caught up before the next run."""
        paused = [pid for name in PIPELINE if (pid := self.st.apps.pid(name)) is not None]
        name = "start + end pairs with the pipeline paused"
        try:
            for pid in paused:
                os.kill(pid, signal.SIGSTOP)
            with CpuMeter(self.st.cpu_roots) as meter:
                res = load()
        finally:
            for pid in paused:
                os.kill(pid, signal.SIGCONT)
        self._beside_pairs(name, res, meter, f"{', '.join(PIPELINE)} stopped by SIGSTOP for "
                                             "the run: the API and PostgreSQL alone")
        self._settle_pipeline()

    def _beside_pairs(self, name: str, res: LoadResult, meter: CpuMeter, note: str) -> None:
        """An info row of pairs beside the pairs' anchor (no target), and its CPU row."""
        row = row_from("info", name, res, unit="pairs/s", note=note + refused(res))
        self.add(beside(row, self.anchor["create"]))
        self._cpu_row(name, meter, res.count, "pair")

    def quota(self) -> None:
        p = self.plan
        requests = [("GET", "/api/live/quota", t, "") for t in self.hb_tokens]
        wrk.run_wrk(self.st.port, requests, 1, p.connections)

        def load() -> wrk.WrkResult:
            return wrk.run_wrk(self.st.port, requests, p.load_s, p.connections)

        res = load()
        self._profiled("quota", load)
        self.quota_row = self.add(versus(
            row_from("scenario", "GET /api/live/quota", res, note="wrk"),
            self.anchor["json"], 0.5))

    def verify(self) -> None:
        target = "≥ 0.4x anchor"
        if self.verify_token is None:
            self.add(not_available("scenario", "POST /api/integration/verify",
                                   "not in the OpenAPI document", target))
            return
        p = self.plan
        requests = [("POST", "/api/integration/verify", self.admin_token,
                     json.dumps({"token": self.verify_token}))]
        wrk.run_wrk(self.st.port, requests, 1, p.connections)
        self.add(versus(row_from("scenario", "POST /api/integration/verify", wrk.run_wrk(
            self.st.port, requests, p.load_s, p.connections), note="wrk"),
            self.anchor["ed25519"], 0.4))

    def lag(self) -> None:
        """At the target's 500 commands/s; then, for what the pipeline does when the
        machine is not saturated, at half the heartbeat throughput this run measured."""
        self._lag(500.0)
        measured = getattr(getattr(self, "hb", None), "rate", None)
        if measured:
            self._lag(max(10.0, measured / 2), info=True)

    def _lag(self, rate: float, info: bool = False) -> None:
        p = self.plan
        raw = self._hb_raw()
        # Warmed up at the same rate first, as every scenario is. The sessions sat idle
        # through the runs before, so the first heartbeat on each bills its session and
        # its ledger: for the first half second, twice the events a second of the
        # steady state, which the projection then trails by up to ~0.2 s.
        httpload.run(httpload.open_loop(self.st.port, rate, min(2.0, p.lag_s / 4),
                                        lambda i: raw[i % len(raw)]))
        self._settle_pipeline()
        answered: list[tuple[float, int]] = []

        def on_response(_i: int, r: Response, done: float) -> None:
            position = r.headers.get(b"x-event-position")
            if position is not None:
                answered.append((done, int(position)))

        poller = WatermarkPoller(self.st.conninfo, "quota", p.lag_s + 5)
        time.sleep(0.5)
        res = httpload.run(httpload.open_loop(
            self.st.port, rate, p.lag_s, lambda i: raw[i % len(raw)], on_response
        ))
        marks, polls = poller.result()
        values, missed = lags(answered, marks)
        poll_ms = 1000 * (p.lag_s + 5) / max(polls, 1)
        lag_res = LoadResult(seconds=res.seconds, latencies=values)
        what = (f"command-to-projection lag at half the heartbeat throughput ({rate:.0f}/s)"
                if info else f"command-to-projection lag at {rate:.0f} commands/s")
        row = Row(
            "info" if info else "scenario", what, unit="cmd/s",
            rate=res.rate, p50_ms=lag_res.percentile_ms(50), p99_ms=lag_res.percentile_ms(99),
            count=len(answered), failed=res.failed + missed,
            target="—" if info else "p99 ≤ 100 ms",
            note=f"heartbeats, open loop; command p99 {res.percentile_ms(99) or 0:.0f} ms; "
                 f"{res.dropped} dropped; watermark polled every {poll_ms:.1f} ms; "
                 f"{missed} positions never reached",
        )
        if not info:
            row.passed = (
                row.p99_ms is not None and row.p99_ms <= 100 and missed == 0
                and res.rate >= 0.95 * rate
            )
        self.add(row)

    def rebuild(self) -> None:
        target = "≥ 20,000 events/s"
        if "projections" not in self.commands or cli_help("projections", "rebuild") is None:
            self.add(not_available("scenario", "projection rebuild from the event store",
                                   "no `xentree-live projections rebuild`", target))
            return
        events = preload.count_events(self.st.settings)
        usage = cli_help("projections", "rebuild") or ""
        argv = [cli_path(), "projections", "rebuild"]
        if "projection" in usage.partition("positional arguments")[2]:
            argv.append("quota")
        started = time.monotonic()
        proc = subprocess.run(argv, env=self.st.env, capture_output=True, text=True,
                              check=False, timeout=1800)
        elapsed = time.monotonic() - started
        if proc.returncode != 0:
            self.add(Row("scenario", "projection rebuild from the event store", unit="",
                         target=target, status="error",
                         note=f"`{shlex.join(argv[1:])}` exit {proc.returncode}: "
                              f"{proc.stderr.strip()[-200:]}"))
            return
        row = Row("scenario", "projection rebuild from the event store", unit="events/s",
                  rate=events / elapsed, count=events, target=target,
                  note=f"`{shlex.join(argv[1:])}`, {events:,} events, {elapsed:.1f} s "
                       f"wall (process start included); it said: "
                       f"{(proc.stdout.strip().splitlines() or [''])[-1][:160]}")
        row.passed = row.rate is not None and row.rate >= 20_000
        self.add(row)

    def realtime(self) -> None:
        sockets = self.plan.sockets
        name = f"realtime: {sockets} sockets on one bridge, heartbeat reply latency"
        target = "500 sockets open; event p99 and memory per socket reported"
        if "realtime" not in self.commands or "engine" not in self.commands:
            self.add(not_available("scenario", name, "no `xentree-live realtime`", target))
            return
        from ops.benchmark.realtime import run_realtime
        from ops.stack import wait_for_tcp

        rt_port, engine_port = free_port(), free_port()
        env = {**self.st.env, "XENTREE_REALTIME_PORT": str(rt_port),
               "XENTREE_REALTIME_URL": f"ws://127.0.0.1:{rt_port}",
               "XENTREE_ENGINE_URL": f"ws://127.0.0.1:{engine_port}"}
        log = (self.st.work / "realtime.log").open("a", encoding="utf-8")
        procs = AppProcesses(env, [("engine", ["engine"]), ("realtime", ["realtime"])],
                             output=Output(log), autorestart=False).start()
        try:
            wait_for_tcp("127.0.0.1", engine_port, 60)
            wait_for_tcp("127.0.0.1", rt_port, 60)
            pid = procs.pid("realtime")
            assert pid is not None
            tokens = mint_tokens(self.issuer, "rt", sockets, "live:read live:write")
            rate = max(20.0, min(100.0, (self.hb.rate or 40.0) / 2))
            res = run_realtime(f"ws://127.0.0.1:{rt_port}/", tokens, pid, rate,
                               min(self.plan.load_s, 3) if self.args.quick else self.plan.load_s)
        finally:
            procs.stop()
            log.close()
        per_socket = res.bytes_per_socket
        row = row_from("scenario", name, res.events, unit="events/s", target=target,
                       note=f"{res.opened}/{sockets} sockets with a session "
                            f"(start p99 {res.start.percentile_ms(99) or 0:,.0f} ms); "
                            f"{(per_socket or 0) / 1024:,.0f} KiB RSS per socket; "
                            f"{rate:.0f} heartbeats/s spread over the sockets"
                            + (f"; errors: {'; '.join(res.open_errors[:2])}"
                               if res.open_errors else ""))
        row.extra = {"sockets": res.opened, "bytes_per_socket": per_socket,
                     "rss_before": res.rss_before, "rss_after": res.rss_after}
        row.passed = res.opened == sockets and res.events.failed == 0
        self.add(row)

    def growth(self) -> None:
        p = self.plan
        hb_rate = max(20.0, min(200.0, (self.hb.rate or 40.0) / 2))
        q_rate = max(50.0, min(500.0, (self.quota_row.rate or 100.0) / 2))
        raw = self._hb_raw()
        quota = [build_request("GET", "/api/live/quota", {"Authorization": f"Bearer {t}"})
                 for t in self.hb_tokens]
        first: dict[str, float] = {}
        for level in p.growth_levels:
            have = preload.count_events(self.st.settings)
            how = f"{have:,} stored already"
            if have < level:
                saved, took = preload.preload(self.st.settings, level - have)
                self.add(Row("info", f"preload to {level:,} events", unit="events/s",
                             rate=saved / took, count=saved,
                             note="LiveApplication.save of 50 aggregates per call"))
                top = preload.count_events(self.st.settings)
                caught = wait_for_watermark(self.st.conninfo, top, p.catch_up_timeout_s)
                if caught is None:
                    self.add(Row("info", f"relay + projections catch-up to {top:,}",
                                 unit="", status="error",
                                 note=f"not caught up within {p.catch_up_timeout_s:.0f} s"))
                else:
                    # The relay and projectors run during the preload: their rate is over
                    # the preload and the wait after it (just the wait would credit them
                    # with the preload's time when they keep up with it).
                    self.add(Row("info", f"relay + projections through {top:,}",
                                 unit="events/s", rate=saved / (took + caught), count=saved,
                                 note=f"caught up {caught:.1f} s after the preload's "
                                      f"{took:.1f} s"))
                how = f"{top:,} stored"
                settle(parse_database_url(self.st.settings.database_url).as_owner().conninfo())
                # Warm the API again (its caches, PostgreSQL's buffers) before measuring.
                httpload.run(httpload.open_loop(self.st.port, hb_rate, 1, _cycle(raw)))
            for key, name, requests, rate in (
                ("hb", "heartbeat", raw, hb_rate), ("quota", "quota read", quota, q_rate)
            ):
                res = httpload.run(httpload.open_loop(
                    self.st.port, rate, p.growth_s, _cycle(requests)
                ))
                row = row_from("growth", f"{name} p99 with {level:,} events ({rate:,.0f}/s)",
                               res, note=f"open loop; {how}")
                if key not in first and row.p99_ms:
                    first[key] = row.p99_ms
                    row.target = "reference for ≤ 1.5x"
                else:
                    row.anchor = f"{name} p99 at {p.growth_levels[0]:,}"
                    if row.p99_ms is not None and first.get(key):
                        row.ratio = row.p99_ms / first[key]
                        row.passed = row.ratio <= 1.5
                    row.target = "≤ 1.5x reference"
                self.add(row)

    def _settle_pipeline(self) -> None:
        """A throughput run leaves the relay and projections behind the store; measure
        what follows from a caught-up system, not during the previous run's catch-up."""
        top = preload.count_events(self.st.settings)
        waited = wait_for_watermark(self.st.conninfo, top, self.plan.catch_up_timeout_s)
        if waited is None:
            self.notes.append(f"the projections had not caught up with {top:,} events")

    def _cpu_row(self, name: str, meter: CpuMeter, units: int, unit: str) -> None:
        """The info row of where the measured run's CPU went (ops/benchmark/cpu.py)."""
        usage = meter.usage
        assert usage is not None
        each = usage.per_unit_ms(units)
        self.add(Row("info", f"CPU during {name} (from /proc, the measured run itself)",
                     unit=f"ms CPU/{unit}", rate=sum(each.values()) if units else None,
                     count=units, note=usage.describe(units, unit),
                     extra={"cpu_ms_per_unit": each, "cores_busy": usage.cores_busy}))

    def _pg_waits(self, name: str, commands_per_unit: int, load: Callable[[], float]) -> None:
        """With --pg-waits: an extra, unmeasured run of the same load while PostgreSQL's
        client backends are sampled (ops/benchmark/pgwaits.py); an info row says where
        the appends spend their time."""
        if not self.args.pg_waits:
            return
        with WaitSampler(self.st.conninfo) as sampler:
            rate = load() * commands_per_unit
        self.add(Row("info", f"PostgreSQL during {name} (--pg-waits: a run of its own, "
                             "pg_stat_activity sampled every 5 ms)",
                     unit="cmd/s", rate=rate, note=sampler.waits.describe(rate)))

    def _profiled(self, name: str, load: Callable[[], object]) -> None:
        """With --profile: an extra, unmeasured run of the same load under py-spy (the
        sampler slows the process, so the measured run is never the profiled one)."""
        if not self.args.profile:
            return
        profile = self._start_profile(name)
        if profile is not None:
            load()
            profile.wait(self.plan.load_s + 60)

    def _start_profile(self, name: str) -> subprocess.Popen[bytes] | None:
        pid = self.st.apps.pid("api")
        spy = Path(sys.executable).parent / "py-spy"
        if pid is None or not spy.exists():
            self.notes.append("profile skipped: py-spy is not installed in .venv")
            return None
        out = RESULTS / f"profile-{name}.svg"
        self.notes.append(f"py-spy flame graph of the API during {name}: ops/results/{out.name}")
        return subprocess.Popen(
            [str(spy), "record", "--pid", str(pid), "--subprocesses", "--duration",
             str(self.plan.load_s), "--rate", "200", "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )


# The processes behind the write path, paused for the pairs' run without them.
PIPELINE = ("relay", "projector", "reaper", "realtime")

# In the order they run: growth fills the store, which the rebuild then measures.
SCENARIOS = ("heartbeat", "pairs", "quota", "verify", "lag", "realtime", "growth", "rebuild")


def refused(res: LoadResult) -> str:
    """The answers that were not 2xx, by status, when there were any (a failed row should
    say why it failed)."""
    bad = {status: n for status, n in sorted(res.statuses.items()) if status >= 400}
    errors = f", {res.errors} connection errors" if res.errors else ""
    return (f"; answered {', '.join(f'{n} x {s}' for s, n in bad.items())}" if bad else "") + errors


def _cycle(items: list[bytes]) -> Callable[[int], bytes]:
    return lambda i: items[i % len(items)]


def _git(*words: str) -> str:
    proc = subprocess.run(["git", *words], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    return proc.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ops/bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (under 3 minutes)")
    parser.add_argument("--smoke", action="store_true",
                        help="every row in seconds, figures meaningless (the bench's own test)")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="folder for the tables (default ops/results)")
    parser.add_argument("--workers", type=int, default=int(
        os.environ.get("XENTREE_API_WORKERS", "1")), help="API (and bare anchor) workers")
    parser.add_argument("--database-url", help="use this PostgreSQL server (a scratch DB)")
    parser.add_argument("--kafka-bootstrap", help="use this Kafka cluster (a new topic)")
    parser.add_argument("--readme", action="store_true",
                        help="also replace the table in README.md's performance section")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy flame graph of the API during the heartbeat, pairs and quota "
                             "loads (an extra run of each)")
    parser.add_argument("--pg-waits", action="store_true",
                        help="where PostgreSQL's backends spend the heartbeat and pairs "
                             "loads (an extra run of each, sampled)")
    parser.add_argument("--skip-growth", action="store_true")
    parser.add_argument("--only", metavar="NAMES",
                        help="comma-separated scenarios to run (the anchors always run): "
                             + ", ".join(SCENARIOS) + "; results go to a -partial file")
    args = parser.parse_args(argv)
    only = [n.strip() for n in args.only.split(",")] if args.only else list(SCENARIOS)
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    if args.only and args.readme:
        parser.error("--readme needs the whole run, not --only")
    if args.skip_growth and "growth" in only:
        only.remove("growth")
    plan = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.smoke and args.readme:
        parser.error("--readme takes a real run, not --smoke")
    if not wrk.available():
        say("error: wrk is not installed (./ops/bench installs it with apt-get when root)")
        return 2
    started = datetime.now(UTC)
    t0 = time.monotonic()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    work = Path(tempfile.mkdtemp(prefix="xentree-bench-"))
    say(f"{'quick' if args.quick else 'full'} run; logs in {work}")
    with stack(args, work) as st:
        bench = Bench(args, plan, st)
        bench.prepare()
        bench.anchors()
        for name in SCENARIOS:
            if name in only:
                getattr(bench, name)()
    meta = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": "./ops/bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "quick": args.quick,
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "api_workers": args.workers,
        "fsync": bench.fsync,
        "commit": _git("rev-parse", "--short", "HEAD") or "?",
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "elapsed_s": time.monotonic() - t0,
        "plan": plan.__dict__,
        "notes": bench.notes,
    }
    stem = started.strftime("bench-%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    if args.only:
        stem += "-partial"
    if args.smoke:
        stem += "-smoke"
    md_path, json_path = report.write(bench.rows, meta, args.results, stem)
    say(f"wrote {md_path} and {json_path}")
    if args.readme:
        if report.update_readme(ROOT / "README.md", report.markdown(bench.rows, meta)):
            say("updated the table in README.md")
        else:
            say("README.md has no bench markers; not updated")
    print(report.markdown(bench.rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
