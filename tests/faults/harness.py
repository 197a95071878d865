"""A private stack (own PostgreSQL, own broker, real processes) with a scripted workload,
for fault tests: every command is sent with an Idempotency-Key and retried with the same
key until it is answered, so after any fault the store must hold exactly the answered
commands, Kafka at least one message per event, and every projection the store's totals.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psycopg
from kafka import KafkaConsumer, TopicPartition

from adapters.auth.dev_issuer import DevIssuer
from adapters.bootstrap import build_application
from application.idempotency import owner_of
from application.settings import load_settings
from domain.ledger import UsageLedger
from domain.session import LiveSession
from ops.launcher import AppProcesses, Output
from ops.stack import EmbeddedKafka, EmbeddedPostgres, free_port, wait_for_http

TOPIC = "xentree.faults.events"


@dataclass
class Report:
    acknowledged: int = 0
    found_in_store: int = 0
    events: int = 0
    events_missing_in_kafka: int = 0
    kafka_messages: int = 0
    projection_rows_checked: int = 0
    projection_mismatches: list[str] = field(default_factory=list)
    server_errors: int = 0
    unavailable_answers: int = 0
    rebuild_check: str = ""

    def line(self, fault: str) -> str:
        return (
            f"FAULT {fault}: acknowledged={self.acknowledged} found={self.found_in_store} "
            f"events={self.events} kafka_messages={self.kafka_messages} "
            f"missing_in_kafka={self.events_missing_in_kafka} "
            f"projection_rows={self.projection_rows_checked} "
            f"mismatches={len(self.projection_mismatches)} 5xx={self.server_errors} "
            f"503={self.unavailable_answers}"
        )


class Stack:
    def __init__(self, workdir: Path, processes: list[tuple[str, list[str]]]) -> None:
        self.workdir = workdir
        self.pg = EmbeddedPostgres(workdir / "pg", free_port(), log_path=workdir / "pg.log")
        self.kafka = EmbeddedKafka(free_port(), log_path=workdir / "tansu.log")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.processes = processes
        self.apps: AppProcesses | None = None
        self.env: dict[str, str] = {}

    def start(self) -> Stack:
        database_url = self.pg.start()
        bootstrap = self.kafka.start()
        self.env = {
            **os.environ,
            "XENTREE_DATABASE_URL": database_url,
            "XENTREE_KAFKA_BOOTSTRAP": bootstrap,
            "XENTREE_KAFKA_TOPIC": TOPIC,
            "XENTREE_STATE_DIR": str(self.workdir / "state"),
            "XENTREE_API_PORT": str(self.port),
            "XENTREE_IDLE_TIMEOUT_SECONDS": "30",
            "XENTREE_REAPER_INTERVAL_SECONDS": "0.5",
            "PYTHONUNBUFFERED": "1",
        }
        self.settings = load_settings(self.env)
        from adapters.eventstore.schema import migrate

        migrate(self.settings)
        log = (self.workdir / "apps.log").open("a", encoding="utf-8")
        self.apps = AppProcesses(
            self.env, self.processes, output=Output(log), autorestart=False
        ).start()
        wait_for_http(f"{self.url}/healthz", timeout=60)
        self.issuer = DevIssuer.load_or_create(self.settings)
        return self

    def stop(self) -> None:
        if self.apps is not None:
            self.apps.stop()
        self.kafka.stop()
        self.pg.stop()

    def token(self, tenant: str, user: str) -> str:
        scopes = "live:read live:write integration:manage integration:verify"
        return self.issuer.mint(tenant, user, scopes, 3600)

    # ---- agreement ----------------------------------------------------------------

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.pg.url, autocommit=True)

    def check_agreement(self, workload: Workload, timeout: float = 60.0) -> Report:
        report = Report(
            acknowledged=len(workload.acknowledged),
            server_errors=workload.server_errors,
            unavailable_answers=workload.unavailable,
        )
        with self.connect() as conn:
            keys = {
                (owner, key)
                for owner, key in conn.execute("SELECT owner, key FROM idempotency").fetchall()
            }
            report.found_in_store = sum(1 for k in workload.acknowledged if k in keys)
            head = conn.execute(
                "SELECT coalesce(max(notification_id), 0) FROM xentree_live_events"
            ).fetchone()
            events = {
                f"{oid}:{version}"
                for oid, version in conn.execute(
                    "SELECT originator_id, originator_version FROM xentree_live_events"
                ).fetchall()
            }
        report.events = len(events)
        position = head[0] if head else 0
        self._wait_for_watermarks(position, timeout)
        counts = self._kafka_ids(timeout)
        report.kafka_messages = sum(counts.values())
        report.events_missing_in_kafka = len(events - set(counts))
        self._compare_projections(report)
        self._check_every_projection(report)
        return report

    def _check_every_projection(self, report: Report) -> None:
        """Every read model (profile, transcripts, revocations too) rebuilt from the store
        and compared row by row with the live one."""
        done = subprocess.run(
            [str(Path(sys.executable).parent / "xentree-live"), "projections", "rebuild",
             "--check"],
            env=self.env, capture_output=True, text=True, timeout=300,
        )
        report.rebuild_check = done.stdout.strip().splitlines()[-1] if done.stdout else ""
        if done.returncode != 0:
            report.projection_mismatches.append(f"rebuild --check: {done.stdout[-2000:]}")

    def _wait_for_watermarks(self, position: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self.connect() as conn:
                marks = dict(
                    conn.execute(
                        "SELECT projection, min(position) FROM projection_partitions "
                        "GROUP BY projection"
                    ).fetchall()
                )
            if marks and all(m >= position for m in marks.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"projections stuck at {marks}, store at {position}")
            time.sleep(0.2)

    def _kafka_ids(self, timeout: float) -> dict[str, int]:
        consumer = KafkaConsumer(
            bootstrap_servers=self.kafka.bootstrap,
            enable_auto_commit=False,
            consumer_timeout_ms=3000,
        )
        try:
            partitions = consumer.partitions_for_topic(TOPIC) or set()
            tps = [TopicPartition(TOPIC, p) for p in partitions]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            counts: dict[str, int] = {}
            deadline = time.monotonic() + timeout
            for message in consumer:
                event_id = msgspec.json.decode(message.value)["id"]
                counts[event_id] = counts.get(event_id, 0) + 1
                if time.monotonic() > deadline:
                    break
            return counts
        finally:
            consumer.close()

    def _compare_projections(self, report: Report) -> None:
        app = build_application(self.settings)
        try:
            with self.connect() as conn:
                quota = conn.execute(
                    "SELECT ledger_id, used_seconds, limit_seconds, active FROM rm_quota"
                ).fetchall()
                sessions = conn.execute(
                    "SELECT session_id, session_seconds, end_reason FROM rm_sessions"
                ).fetchall()
                ledgers = conn.execute(
                    "SELECT DISTINCT originator_id FROM xentree_live_events "
                    "WHERE topic LIKE %s",
                    ("%UsageLedger.Opened",),
                ).fetchall()
                session_ids = conn.execute(
                    "SELECT DISTINCT originator_id FROM xentree_live_events "
                    "WHERE topic LIKE %s",
                    ("%LiveSession.Started",),
                ).fetchall()
            if len(quota) != len(ledgers):
                report.projection_mismatches.append(
                    f"rm_quota has {len(quota)} rows, store has {len(ledgers)} ledgers"
                )
            if len(sessions) != len(session_ids):
                report.projection_mismatches.append(
                    f"rm_sessions has {len(sessions)} rows, store has {len(session_ids)}"
                )
            for ledger_id, used, limit, active in quota:
                ledger = app.repository.get(ledger_id)
                assert isinstance(ledger, UsageLedger)
                if (used, limit, len(active)) != (
                    ledger.used_seconds, ledger.limit_seconds, len(ledger.active)
                ):
                    report.projection_mismatches.append(f"quota {ledger_id}")
                report.projection_rows_checked += 1
            for session_id, seconds, reason in sessions:
                session = app.repository.get(session_id)
                assert isinstance(session, LiveSession)
                if (seconds, reason) != (session.session_seconds, session.end_reason):
                    report.projection_mismatches.append(f"session {session_id}")
                report.projection_rows_checked += 1
        finally:
            app.close()


class Workload:
    """Users running sessions: start, a few heartbeats, end; each command retried with its
    Idempotency-Key until answered (or the run is over)."""

    def __init__(self, stack: Stack, users: int = 4, pause: float = 0.05) -> None:
        self.stack = stack
        self.users = [
            (f"t-{secrets.token_hex(3)}", f"u-{secrets.token_hex(3)}") for _ in range(users)
        ]
        self.pause = pause
        self.acknowledged: list[tuple[str, str]] = []
        self.server_errors = 0
        self.unavailable = 0
        self.other_commands = 0
        self.max_unavailable_wait = 0.0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> Workload:
        for tenant, user in self.users:
            t = threading.Thread(target=self._run, args=(tenant, user), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=90)

    def commands(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def wait_for_commands(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.commands() < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"workload made only {self.commands()} commands")
            time.sleep(0.1)

    def _run(self, tenant: str, user: str) -> None:
        headers = {"Authorization": f"Bearer {self.stack.token(tenant, user)}"}
        owner = owner_of(tenant, user)
        with httpx.Client(base_url=self.stack.url, timeout=15, headers=headers) as client:
            while not self._stop.is_set():
                started = self._send(client, owner, "/api/live/session/start",
                                     {"session_type": "voice"})
                if started is None:
                    return
                if started.status_code != 201:
                    time.sleep(self.pause)
                    continue
                sid = started.json()["session_id"]
                for _ in range(3):
                    time.sleep(self.pause)
                    if self._send(client, owner, "/api/live/session/heartbeat",
                                  {"session_id": sid}) is None:
                        return
                if self._send(client, owner, "/api/live/session/end",
                              {"session_id": sid}) is None:
                    return
                if not self._extras(client, owner, sid):
                    return

    def _extras(self, client: httpx.Client, owner: str, sid: str) -> bool:
        """A transcript, a nickname change and a token grant then revoke per session."""
        at = "2026-11-20T10:00:00Z"
        transcript = {
            "session_started_at": at,
            "session_ended_at": at,
            "session_id": sid,
            "transcripts": [{"role": "user", "text": f"hello {sid[:8]}", "timestamp": at}],
        }
        if self._send(client, owner, "/api/live/transcripts", transcript) is None:
            return False
        nick = self._call(client, "PUT", "/api/live/profile/nickname",
                          {"nickname": f"n-{secrets.token_hex(3)}"}, None)
        if nick is None:
            return False
        grant = self._send(client, owner, "/api/integration/grant",
                           {"subject": "embed-user", "scopes": ["live:read"]})
        if grant is None:
            return False
        if grant.status_code == 201:
            jti = grant.json()["jti"]
            if self._send(client, owner, "/api/integration/revoke", {"jti": jti}) is None:
                return False
        return True

    def _send(
        self, client: httpx.Client, owner: str, path: str, body: dict[str, Any]
    ) -> httpx.Response | None:
        return self._call(client, "POST", path, body, owner)

    def _call(
        self,
        client: httpx.Client,
        method: str,
        path: str,
        body: dict[str, Any],
        owner: str | None,
    ) -> httpx.Response | None:
        """Send until answered; POSTs carry an Idempotency-Key (acknowledged ones are
        counted), a PUT is idempotent by itself."""
        key = str(uuid.uuid4())
        headers = {"Idempotency-Key": key} if owner is not None else {}
        first_failure: float | None = None
        while True:
            try:
                r = client.request(method, path, json=body, headers=headers)
            except httpx.HTTPError:
                r = None
            if r is not None and r.status_code < 500:
                if first_failure is not None:
                    self.max_unavailable_wait = max(
                        self.max_unavailable_wait, time.monotonic() - first_failure
                    )
                with self._lock:
                    if owner is not None and r.status_code in (200, 201):
                        self.acknowledged.append((owner, key))
                    elif owner is None and r.status_code == 200:
                        self.other_commands += 1
                return r
            if r is not None:
                with self._lock:
                    if r.status_code == 503:
                        self.unavailable += 1
                        assert r.headers.get("Retry-After")
                        assert r.headers["content-type"].startswith("application/problem+json")
                    else:
                        self.server_errors += 1
            first_failure = first_failure or time.monotonic()
            if self._stop.is_set() and time.monotonic() - first_failure > 60:
                return None
            time.sleep(0.2)


@contextlib.contextmanager
def running_stack(
    workdir: Path, processes: list[tuple[str, list[str]]]
) -> Iterator[Stack]:
    stack = Stack(workdir, processes).start()
    try:
        yield stack
    finally:
        stack.stop()
        print((workdir / "apps.log").read_text(errors="replace")[-5000:])
