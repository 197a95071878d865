"""Export and point-in-time replay from the event store alone, via the CLI."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from adapters.bootstrap import build_application
from adapters.eventstore.schema import migrate
from adapters.relay.envelope import Envelope
from application.live import LiveApplication
from application.principal import Principal
from application.settings import Settings
from domain.ids import ledger_id
from domain.ledger import UsageLedger
from domain.periods import period_bounds
from tests.support.audit import as_app_role, cli, last_json, one_session, principal, session_id
from tests.support.clock import Clock
from tests.support.services import scratch_database


@pytest.fixture(scope="module")
def own_database(database_url: str) -> Iterator[str]:
    with scratch_database(database_url) as url:
        yield url


@pytest.fixture(scope="module")
def app(own_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApplication]:
    s = Settings(
        database_url=as_app_role(own_database), state_dir=str(tmp_path_factory.mktemp("s"))
    )
    migrate(s)
    a = build_application(s)
    yield a
    a.close()


def _instant() -> datetime:
    """Now, then a pause, so later events are stamped strictly after it."""
    at = datetime.now(UTC)
    time.sleep(0.05)
    return at


def _written(app: LiveApplication, p: Principal, clock: Clock) -> dict[str, Any]:
    """The write side's own figures at this moment."""
    ledger = app.repository.get(
        ledger_id(p.tenant_id, p.user_id, period_bounds(clock())[0])
    )
    assert isinstance(ledger, UsageLedger)
    return {
        "used": ledger.used_seconds,
        "plan": ledger.plan,
        "limit": ledger.limit_seconds,
        "active": sorted(ledger.active),
    }


def _replayed(url: str, state: Path, p: Principal, until: datetime) -> dict[str, Any]:
    result: dict[str, Any] = last_json(
        cli(url, state, "audit", "replay", "--tenant", p.tenant_id, "--user", p.user_id,
            "--until", until.isoformat().replace("+00:00", "Z"))
    )
    return result


def test_replay_at_three_instants_matches_what_was_recorded(
    app: LiveApplication, own_database: str, tmp_path: Path
) -> None:
    p, other, clock = principal(), principal(), Clock()
    before = _instant()
    first = one_session(app, p, clock, 10)  # 11 s billed
    one_session(app, other, Clock(), 30)  # someone else's history is not folded in
    t1, at_t1 = _instant(), _written(app, p, clock)
    clock.advance(60)
    second = one_session(app, p, clock, 20)  # 21 s more
    t2, at_t2 = _instant(), _written(app, p, clock)
    app.assign_plan(p.tenant_id, p.user_id, "pro", None, None, clock)
    clock.advance(60)
    third = session_id(app.start_session(p, "avatar", clock))
    clock.advance(7)
    app.heartbeat(p, third, clock)  # still active at t3
    t3, at_t3 = _instant(), _written(app, p, clock)

    assert _replayed(own_database, tmp_path, p, before)["sessions"] == []
    expectations = [
        (t1, at_t1, {first: "client"}),
        (t2, at_t2, {first: "client", second: "client"}),
        (t3, at_t3, {first: "client", second: "client", third: None}),
    ]
    for until, written, sessions in expectations:
        replayed = _replayed(own_database, tmp_path, p, until)
        (quota,) = replayed["quota"]
        assert replayed["billed_seconds"] == quota["used_seconds"] == written["used"]
        assert (quota["plan"], quota["limit_seconds"]) == (written["plan"], written["limit"])
        assert sorted(a["session_id"] for a in quota["active"]) == written["active"]
        assert {s["id"]: s["end_reason"] for s in replayed["sessions"]} == sessions
        assert {s["tenant_id"] for s in replayed["sessions"]} == {p.tenant_id}
    assert (at_t1["used"], at_t2["used"], at_t3["used"]) == (11, 32, 39)
    assert at_t3["plan"] == "pro" and at_t3["active"] == [third]


def test_export_writes_filtered_cloudevents_lines(
    app: LiveApplication, own_database: str, tmp_path: Path
) -> None:
    p, other = principal(), principal()
    one_session(app, p, Clock(), 5)
    middle = _instant()
    one_session(app, p, Clock(), 6)
    one_session(app, other, Clock(), 7)

    def export(*args: str) -> list[Envelope]:
        done = cli(own_database, tmp_path, "audit", "export", *args)
        assert done.returncode == 0, done.stderr
        return [msgspec.json.decode(line, type=Envelope) for line in done.stdout.splitlines()]

    mine = export("--tenant", p.tenant_id, "--user", p.user_id)
    assert mine and {(e.tenantid, e.userid) for e in mine} == {(p.tenant_id, p.user_id)}
    assert [e.position for e in mine] == sorted(e.position for e in mine)
    assert {e.type for e in mine} >= {
        "xentree.live.LiveSession.Started", "xentree.live.LiveSession.Billed",
        "xentree.live.LiveSession.Ended", "xentree.live.UsageLedger.SessionClosed",
    }
    later = export("--tenant", p.tenant_id, "--since", middle.isoformat())
    assert later and all(e.time >= middle for e in later)
    assert len(later) < len(mine)
    earlier = export("--tenant", p.tenant_id, "--until", middle.isoformat())
    assert len(earlier) + len(later) == len(mine)

    out = tmp_path / "all.jsonl"
    done = cli(own_database, tmp_path, "audit", "export", "--output", str(out))
    assert done.returncode == 0 and "exported" in done.stderr
    everything = [msgspec.json.decode(x, type=Envelope) for x in out.read_bytes().splitlines()]
    assert {e.id for e in mine} <= {e.id for e in everything}
    assert len({e.id for e in everything}) == len(everything)
