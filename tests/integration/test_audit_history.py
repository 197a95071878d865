"""Append-only history enforced by PostgreSQL, and the hash chain over it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import msgspec
import psycopg
import pytest
from psycopg import sql as psql

from adapters.bootstrap import build_application
from adapters.eventstore.chain import event_digest, stored_timestamp, verify
from adapters.eventstore.schema import migrate
from application.live import LiveApplication
from application.settings import Settings, parse_database_url
from ops.launcher import log_in_as_app_role
from tests.support.audit import APP_ROLE, as_app_role, cli, one_session, principal
from tests.support.clock import Clock
from tests.support.services import scratch_database

CHANGES = (
    "UPDATE xentree_live_events SET topic = topic",
    "DELETE FROM xentree_live_events",
    "TRUNCATE xentree_live_events",
    "UPDATE event_chain SET hash = hash",
    "DELETE FROM event_chain",
    "TRUNCATE event_chain",
)


@pytest.fixture(scope="module")
def own_database(database_url: str) -> Iterator[str]:
    """Of this module alone: its history must not slow other tests' projections."""
    with scratch_database(database_url) as url:
        yield url


@pytest.fixture(scope="module")
def settings(own_database: str) -> Settings:
    s = Settings(database_url=as_app_role(own_database))
    migrate(s)
    return s


@pytest.fixture(scope="module")
def app(settings: Settings) -> Iterator[LiveApplication]:
    a = build_application(settings)
    yield a
    a.close()


@pytest.fixture
def scratch(database_url: str, tmp_path: Path) -> Iterator[tuple[str, LiveApplication]]:
    """A database of its own with a little history, for tests that tamper with it."""
    with scratch_database(database_url) as url:
        s = Settings(database_url=as_app_role(url), state_dir=str(tmp_path))
        migrate(s)
        a = build_application(s)
        try:
            for _ in range(3):
                one_session(a, principal(), Clock(), 10)
            yield url, a
        finally:
            a.close()


def test_the_dev_stack_logs_its_apps_in_as_the_app_role(
    settings: Settings, own_database: str
) -> None:
    """`./ops/run` (its own server): the apps log in as the role itself, so not even a
    statement they could be tricked into running switches back to the owner."""
    env = log_in_as_app_role({"XENTREE_DATABASE_ROLE": APP_ROLE}, own_database)
    assert env["XENTREE_DATABASE_ROLE"] == ""
    owner = parse_database_url(own_database).user
    with psycopg.connect(env["XENTREE_DATABASE_URL"], autocommit=True) as conn:
        assert conn.execute("SELECT current_user, session_user").fetchone() == (
            APP_ROLE, APP_ROLE)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(psql.SQL("SET ROLE {}").format(psql.Identifier(owner)))
        for statement in CHANGES:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_the_application_connects_as_a_role_that_cannot_change_history(
    settings: Settings, app: LiveApplication
) -> None:
    one_session(app, principal(), Clock(), 5)  # the role can append
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (APP_ROLE,)
        assert conn.execute("SELECT count(*) FROM xentree_live_events").fetchone() != (0,)
        for statement in CHANGES:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                conn.execute(statement)
        # Nor can it lift the triggers.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("ALTER TABLE xentree_live_events DISABLE TRIGGER USER")
        # Nor write a row of its own: it appends only through the function that chains.
        for forged in (
            "INSERT INTO event_chain (position, hash) VALUES (10000000, '\\x00')",
            "INSERT INTO xentree_live_events (originator_id, originator_version, topic, "
            "state) VALUES (gen_random_uuid(), 1, 'x', '\\x7b7d')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                conn.execute(forged)
    one_session(app, principal(), Clock(), 5)  # and appending still works


def test_triggers_refuse_changes_even_for_the_owner(
    own_database: str, app: LiveApplication
) -> None:
    with psycopg.connect(own_database, autocommit=True) as conn:
        for statement in CHANGES:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)


def test_chain_stays_correct_with_concurrent_writers(
    settings: Settings, app: LiveApplication
) -> None:
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(5):
                one_session(app, principal(), Clock(), 3)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        verdict, _ = verify(conn)
        events, links, top = conn.execute(
            "SELECT (SELECT count(*) FROM xentree_live_events), "
            "(SELECT count(*) FROM event_chain), "
            "(SELECT max(notification_id) FROM xentree_live_events)"
        ).fetchone() or (0, 0, 0)
    assert verdict.ok, verdict
    assert verdict.events == events == links
    assert verdict.position == top


@pytest.mark.parametrize(
    ("position", "topic", "state"),
    [
        (1, "domain.session:LiveSession.Started",
         b'{"timestamp": {"_type_": "datetime_iso", "_data_": "2026-12-01T10:00:00+00:00"}}'),
        (2**40 + 7, "t\u00e9\u00f1 \U0001f600", '{"timestamp": "caf\u00e9"}'.encode()),
        (99, "x", b'{"no_timestamp": true}'),
        (5, "binary", bytes(range(256)) * 300),
    ],
)
def test_the_databases_digest_is_the_verifiers_digest(
    settings: Settings, position: int, topic: str, state: bytes
) -> None:
    """The append function chains in SQL (given the stamp the recorder reads in Python);
    `audit verify` recomputes it all in Python."""
    aggregate = uuid4()
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xentree_event_digest(%s, %s, %s, %s, %s, %s)",
            (position, aggregate, 3, topic, stored_timestamp(state), state),
        ).fetchone()
    assert row is not None
    assert bytes(row[0]) == event_digest(position, aggregate, 3, topic, state)


def _tamper(url: str, *statements: str) -> None:
    """As the superuser owner, with triggers bypassed."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        for statement in statements:
            conn.execute(statement)


def _verify(url: str, state: Path, *args: str) -> Any:
    return cli(url, state, "audit", "verify", *args)


@pytest.mark.parametrize(
    ("statements", "broken", "reason"),
    [
        (["UPDATE xentree_live_events SET state = state || '\\x20'::bytea "
          "WHERE notification_id = 4"], 4, "altered"),
        (["DELETE FROM xentree_live_events WHERE notification_id = 5"], 5, "removed"),
        (["INSERT INTO xentree_live_events (originator_id, originator_version, topic, state) "
          "SELECT gen_random_uuid(), 1, topic, state FROM xentree_live_events "
          "WHERE notification_id = 2"], None, "out of band"),
        (["UPDATE event_chain SET hash = sha256(hash) WHERE position = 6"], 6, "altered"),
    ],
)
def test_verify_names_the_first_broken_position(
    scratch: tuple[str, LiveApplication],
    tmp_path: Path,
    statements: list[str],
    broken: int | None,
    reason: str,
) -> None:
    url, _ = scratch
    intact = _verify(url, tmp_path)
    assert intact.returncode == 0, intact.stderr
    assert "chain intact" in intact.stdout
    with psycopg.connect(url) as conn:
        top = conn.execute("SELECT max(notification_id) FROM xentree_live_events").fetchone()
    assert top is not None and f"position {top[0]} head " in intact.stdout
    _tamper(url, *statements)
    done = _verify(url, tmp_path)
    assert done.returncode != 0
    expected = broken if broken is not None else int(top[0]) + 1
    assert f"broken at position {expected}:" in done.stderr
    assert reason in done.stderr
    # The verdict is the result either way: the last line of stdout.
    verdict = done.stdout.strip().splitlines()[-1]
    assert verdict.startswith(f"hash chain broken at position {expected}:")
    assert f"intact up to position {expected - 1} head " in verdict


def test_signed_digest_proves_history_unchanged_later(
    scratch: tuple[str, LiveApplication], tmp_path: Path
) -> None:
    url, app = scratch
    digest_file = tmp_path / "digest.json"
    made = cli(url, tmp_path, "audit", "digest", "--output", str(digest_file))
    assert made.returncode == 0, made.stderr
    digest = msgspec.json.decode(digest_file.read_bytes())
    assert set(digest) == {"position", "head", "time", "key_id", "signature"}
    one_session(app, principal(), Clock(), 4)  # history grows: the digest still holds
    assert _verify(url, tmp_path, "--digest", str(digest_file)).returncode == 0

    # A forged digest (another head) is refused by its signature.
    forged = tmp_path / "forged.json"
    forged.write_bytes(msgspec.json.encode({**digest, "head": "00" * 32}))
    done = _verify(url, tmp_path, "--digest", str(forged))
    assert done.returncode != 0 and "signature" in done.stderr

    # A superuser rewrites an early event and recomputes the whole chain consistently:
    # the chain verifies on its own, the digest does not.
    _tamper(
        url,
        "UPDATE xentree_live_events SET state = state || '\\x20'::bytea "
        "WHERE notification_id = 1",
        "DELETE FROM event_chain",
    )
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        from adapters.eventstore.chain import backfill

        backfill(conn)
    assert _verify(url, tmp_path).returncode == 0
    done = _verify(url, tmp_path, "--digest", str(digest_file))
    assert done.returncode != 0
    assert f"up to position {digest['position']} differs from the signed digest" in done.stderr
