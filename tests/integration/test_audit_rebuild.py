"""Provable rebuilds: `projections rebuild --check` equals the Kafka-fed read models after
a workload, differs (non-zero exit) after a row is altered by hand, and `projections
rebuild` switches to a fresh table while the projectors keep running."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from adapters.bootstrap import build_application
from adapters.eventstore.schema import migrate
from adapters.projector.runner import PROJECTIONS, Projector, projection_watermark
from adapters.relay.relay import Relay
from application.live import LiveApplication
from application.settings import Settings
from tests.support.audit import as_app_role, cli, one_session, principal
from tests.support.clock import Clock
from tests.support.services import scratch_database
from tests.support.waiting import running, wait_until


@pytest.fixture
def stack(
    database_url: str, kafka_bootstrap: str, fresh_topic: str, tmp_path: Path
) -> Iterator[tuple[str, LiveApplication]]:
    """A database of its own, with the relay and every registered projector running."""
    with scratch_database(database_url) as url, ExitStack() as stack:
        settings = Settings(
            database_url=as_app_role(url),
            kafka_bootstrap=kafka_bootstrap,
            kafka_topic=fresh_topic,
            relay_poll_seconds=0.2,
            state_dir=str(tmp_path),
        )
        migrate(settings)
        app = build_application(settings)
        stack.callback(app.close)
        stack.enter_context(running(Relay(settings, app).run_forever))
        group = secrets.token_hex(4)
        for name in PROJECTIONS:
            projector = Projector(settings, name, group_id=f"xentree-live.{name}.{group}")
            stack.enter_context(running(projector.run_forever))
        yield url, app


def workload(app: LiveApplication) -> None:
    for i in range(4):
        p, clock = principal(), Clock()
        one_session(app, p, clock, 10 + i)
        if i % 2:
            app.assign_plan(p.tenant_id, p.user_id, "pro", None, None, clock)
        app.set_nickname(p, f"nick {i}", None)


def caught_up(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(max(notification_id), 0) FROM xentree_live_events")
        top = int(row.fetchone()[0])  # type: ignore[index]
        return all(projection_watermark(conn, name) >= top for name in PROJECTIONS)


def check(url: str, state: Path, *names: str) -> tuple[int, dict[str, dict[str, Any]], str]:
    """The exit status, one report per projection, and stderr; the verdict (equal or
    which differ) is always the last line of stdout."""
    done = cli(url, state, "projections", "rebuild", "--check", *names)
    *lines, verdict = done.stdout.strip().splitlines()
    reports = {}
    for line in lines:
        report = msgspec.json.decode(line)
        reports[report["projection"]] = report
    bad = [name for name, report in reports.items() if not report["ok"]]
    assert verdict == (
        f"rebuilt rows differ from the live ones: {', '.join(bad)}"
        if bad
        else f"rebuilt rows equal the live ones: {', '.join(reports)}"
    )
    return done.returncode, reports, done.stderr


def test_rebuild_check_equal_then_different_then_repaired(
    stack: tuple[str, LiveApplication], tmp_path: Path
) -> None:
    url, app = stack
    workload(app)
    wait_until(lambda: caught_up(url), 30, "the projections to catch up")

    status, reports, err = check(url, tmp_path)
    assert status == 0, err
    assert set(reports) == set(PROJECTIONS)
    for name, report in reports.items():
        assert report["ok"] and report["digest"] == report["live_digest"], name
        assert report["rows"] == report["live_rows"] and report["pending"] == 0, name
    assert reports["quota"]["rows"] == 4 and reports["sessions"]["rows"] == 4
    assert reports["profile"]["rows"] == 4
    quota_digest = reports["quota"]["digest"]

    with psycopg.connect(url, autocommit=True) as conn:  # as the owner, by hand
        conn.execute(
            "UPDATE rm_quota SET used_seconds = used_seconds + 1 WHERE ledger_id = "
            "(SELECT ledger_id FROM rm_quota ORDER BY ledger_id LIMIT 1)"
        )
    status, reports, err = check(url, tmp_path)
    assert status != 0 and "quota" in err
    assert set(reports) == set(PROJECTIONS)
    assert not reports["quota"]["ok"] and reports["quota"]["differences"] == 1
    assert reports["quota"]["live_digest"] != reports["quota"]["digest"] == quota_digest
    assert all(r["ok"] for n, r in reports.items() if n != "quota")

    with psycopg.connect(url, autocommit=True) as conn:  # a projected row lost by hand
        conn.execute(
            "DELETE FROM rm_sessions WHERE session_id = "
            "(SELECT session_id FROM rm_sessions ORDER BY session_id LIMIT 1)"
        )
    status, reports, err = check(url, tmp_path, "sessions", "profile")
    assert status != 0 and "sessions" in err
    assert set(reports) == {"sessions", "profile"} and reports["profile"]["ok"]
    (missing,) = reports["sessions"]["first_differences"]
    assert missing.endswith("missing from the live table")
    assert reports["sessions"]["live_rows"] == reports["sessions"]["rows"] - 1

    # Rebuild and switch while the projectors keep running and new events arrive.
    writes = threading.Thread(target=workload, args=(app,))
    writes.start()
    done = cli(url, tmp_path, "projections", "rebuild")
    writes.join()
    assert done.returncode == 0, done.stderr
    rebuilt = [msgspec.json.decode(x) for x in done.stdout.strip().splitlines()[:-1]]
    assert {r["projection"] for r in rebuilt} == set(PROJECTIONS)
    assert all(r["events"] > 0 and r["events_per_second"] > 0 for r in rebuilt)

    workload(app)  # the projectors write into the new tables
    wait_until(lambda: caught_up(url), 30, "the projections to catch up after the switch")
    status, reports, err = check(url, tmp_path)
    assert status == 0, err
    assert reports["quota"]["rows"] == 12 and reports["sessions"]["rows"] == 12

    with psycopg.connect(url, autocommit=True) as conn:
        indexes = {r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'rm_quota'"
        )}
        leftovers = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE '%%__rebuild'"
        ).fetchone()
    assert indexes == {"rm_quota_pkey", "rm_quota_owner"}
    assert leftovers == (0,)


def test_check_refuses_unknown_projection(database_url: str, tmp_path: Path) -> None:
    done = cli(database_url, tmp_path, "projections", "rebuild", "--check", "nope")
    assert done.returncode != 0 and "unknown projection" in done.stderr
