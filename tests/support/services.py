"""Real PostgreSQL and Kafka for the tests, and the app processes for end-to-end tests.

By default each test session gets its own embedded PostgreSQL and Tansu on free ports.
XENTREE_DATABASE_URL / XENTREE_KAFKA_BOOTSTRAP point the tests at existing servers instead
(a fresh database is created on that PostgreSQL server and dropped afterwards).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from application.settings import parse_database_url
from ops.launcher import PROCESSES, AppProcesses, Output
from ops.stack import EmbeddedKafka, EmbeddedPostgres, free_port

# Tansu completes a consumer-group join only after about half the session timeout
# (kafka-python's default 45 s means a ~23 s wait), so tests use a short one.
CONSUMER_GROUP_SETTINGS: dict[str, Any] = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
    "max_poll_interval_ms": 10000,
    "auto_offset_reset": "earliest",
    "enable_auto_commit": False,
}


def _with_dbname(url: str, dbname: str) -> str:
    p = parse_database_url(url)
    auth = p.user + (f":{p.password}" if p.password else "")
    return f"postgresql://{auth}@{p.host}:{p.port}/{dbname}"


def _admin_connect(url: str) -> psycopg.Connection[Any]:
    """Connect to the server behind `url`, falling back to its `postgres` database."""
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError:
        return psycopg.connect(_with_dbname(url, "postgres"), autocommit=True, connect_timeout=10)


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A new, uniquely named database on the server of `server_url`; dropped on exit."""
    name = f"xentree_test_{secrets.token_hex(6)}"
    with _admin_connect(server_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_dbname(server_url, name)
    finally:
        with _admin_connect(server_url) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextmanager
def postgres_for_tests(workdir: Path) -> Iterator[str]:
    """The URL of a database for one test session (see the module docstring)."""
    external = os.environ.get("XENTREE_DATABASE_URL", "").strip()
    if external:
        with scratch_database(external) as url:
            yield url
        return
    server = EmbeddedPostgres(workdir / "pg", free_port(), log_path=workdir / "postgres.log")
    try:
        yield server.start()
    finally:
        server.stop()


@dataclass
class KafkaService:
    bootstrap: str
    broker: EmbeddedKafka | None  # None when the tests use an external cluster


@contextmanager
def kafka_for_tests(workdir: Path) -> Iterator[KafkaService]:
    external = os.environ.get("XENTREE_KAFKA_BOOTSTRAP", "").strip()
    if external:
        yield KafkaService(external, None)
        return
    broker = EmbeddedKafka(free_port(), log_path=workdir / "tansu.log")
    try:
        yield KafkaService(broker.start(), broker)
    finally:
        broker.stop()


def unique_topic_name(hint: str = "test") -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", hint).strip("-.")[:80] or "test"
    return f"xentree.test.{slug}.{secrets.token_hex(4)}"


def create_topic(bootstrap: str, name: str, partitions: int = 4) -> str:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="xentree-tests")
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    return name


def start_app_processes(
    database_url: str,
    kafka_bootstrap: str,
    names: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    autorestart: bool = False,
) -> AppProcesses:
    """Run the launcher's app processes (`xentree-live api|relay|project|reaper`) for a test.

    `names` picks from ops.launcher.PROCESSES (default: all). Output goes to `log_path`
    (stdout if None). Call `.stop()` at the end; `.kill(name)`, `.crash(name)` and
    `.restart(name)` are there for fault tests.
    """
    chosen = [(n, a) for n, a in PROCESSES if names is None or n in names]
    missing = set(names or ()) - {n for n, _ in chosen}
    if missing:
        raise ValueError(f"unknown app processes: {sorted(missing)}")
    child_env = {
        **os.environ,
        **(env or {}),
        "XENTREE_DATABASE_URL": database_url,
        "XENTREE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "PYTHONUNBUFFERED": "1",
    }
    stream = log_path.open("a", encoding="utf-8") if log_path else None
    return AppProcesses(child_env, chosen, output=Output(stream), autorestart=autorestart).start()
