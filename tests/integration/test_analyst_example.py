"""The analyst's example consumer (ops/examples/live_seconds_per_day.py) on real PostgreSQL
and Tansu: its per-tenant totals equal the quota projection's and the ledgers' used
seconds, although the relay published every event twice."""

from __future__ import annotations

import secrets
import threading
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import psycopg
import pytest

from adapters.bootstrap import build_application
from adapters.eventstore.schema import migrate
from adapters.projector.runner import Projector
from adapters.readmodels import quota_row
from adapters.relay.relay import Relay
from application.live import LiveApplication
from application.principal import Principal
from application.settings import Settings
from domain.ids import ledger_id
from domain.ledger import UsageLedger
from domain.periods import period_bounds
from ops.examples.live_seconds_per_day import Totals, live_seconds_per_day
from tests.support.clock import Clock
from tests.support.services import CONSUMER_GROUP_SETTINGS
from tests.support.waiting import wait_until

# The clock decides the billed seconds; the envelope `time` is when the event was recorded.
START = datetime(2026, 11, 10, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def settings(database_url: str, kafka_bootstrap: str, fresh_topic: str) -> Settings:
    s = Settings(
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic=fresh_topic,
        relay_poll_seconds=0.2,
    )
    migrate(s)
    with psycopg.connect(database_url, autocommit=True) as conn:
        # The quota projection follows this test's topic from its start.
        conn.execute("DELETE FROM projection_partitions WHERE projection = 'quota'")
    return s


@pytest.fixture
def app(settings: Settings) -> Iterator[LiveApplication]:
    a = build_application(settings)
    yield a
    a.close()


def principal(tenant: str) -> Principal:
    return Principal(
        tenant_id=tenant,
        user_id=f"u-{secrets.token_hex(4)}",
        scopes=frozenset({"live:read", "live:write"}),
        credential="bearer",
    )


def drive(app: LiveApplication, p: Principal, heartbeats: list[float], tail: float) -> None:
    """One session: start, a heartbeat after each gap in `heartbeats`, end after `tail`."""
    clock = Clock(START)
    answer = app.start_session(p, "voice", clock)
    sid = msgspec.json.decode(answer.body)["session_id"]
    for gap in heartbeats:
        clock.advance(gap)
        app.heartbeat(p, sid, clock)
    clock.advance(tail)
    app.end_session(p, sid, "client", clock)


def publish_all(relay: Relay) -> None:
    while relay.run_once():
        pass


def test_example_totals_equal_the_quota_projection(
    settings: Settings, app: LiveApplication
) -> None:
    recorded_from = datetime.now(UTC).date()
    tenants = [f"t-{secrets.token_hex(4)}" for _ in range(2)]
    users = [principal(tenants[0]), principal(tenants[0]), principal(tenants[1])]
    drive(app, users[0], [10, 15.5], 4)
    drive(app, users[0], [7], 2.5)  # a second session of the same user (and ledger)
    drive(app, users[1], [30], 1)
    drive(app, users[2], [5, 5, 5], 12)

    # Published twice, as after a relay crash: the second pass repeats every envelope id.
    relay = Relay(settings, app)
    try:
        publish_all(relay)
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE relay_position SET position = 0 WHERE topic = %s", (settings.kafka_topic,)
            )
        publish_all(relay)
    finally:
        relay.close()

    # The quota projection consumes the same topic meanwhile, in its own group.
    stop = threading.Event()
    projector = Projector(
        settings, "quota", group_id=f"xentree-live.quota.{secrets.token_hex(4)}"
    )
    thread = threading.Thread(target=projector.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        settings_for_group = {
            k: v for k, v in CONSUMER_GROUP_SETTINGS.items()
            if k not in ("auto_offset_reset", "enable_auto_commit")
        }
        totals = live_seconds_per_day(
            settings.kafka_bootstrap,
            settings.kafka_topic,
            f"analyst-{secrets.token_hex(4)}",
            idle_timeout=2.0,
            join_timeout=20.0,
            **settings_for_group,
        )
        period = period_bounds(START)[0]
        ledgers: dict[str, int] = defaultdict(int)
        versions: dict[str, int] = {}
        for p in users:
            ledger: object = app.repository.get(ledger_id(p.tenant_id, p.user_id, period))
            assert isinstance(ledger, UsageLedger)
            ledgers[p.tenant_id] += ledger.used_seconds
            versions[p.user_id] = ledger.version
        with psycopg.connect(settings.database_url, autocommit=True) as conn:

            def projected_rows() -> list[dict[str, Any] | None]:
                return [quota_row(conn, p.tenant_id, p.user_id, period) for p in users]

            # This projector's own rows (the watermark is shared with other tests' groups).
            wait_until(
                lambda: all(
                    row is not None and row["version"] == versions[row["user_id"]]
                    for row in projected_rows()
                ),
                20,
                "the quota projection",
            )
            projected: dict[str, int] = defaultdict(int)
            for row in projected_rows():
                assert row is not None
                projected[row["tenant_id"]] += row["used_seconds"]
    finally:
        stop.set()
        thread.join(timeout=15)

    assert totals.messages == 2 * len(totals.seen_ids)  # every event arrived twice ...
    assert totals.duplicates == len(totals.seen_ids)  # ... and was counted once
    assert all(projected.values())
    # The topic also carries other tests' tenants.
    ours = {t: v for t, v in totals.per_tenant().items() if t in set(tenants)}
    assert ours == dict(projected) == dict(ledgers)
    # Dated by the envelope's `time` (UTC), one row per tenant and day.
    assert {day for _, day in totals.seconds} <= {recorded_from, datetime.now(UTC).date()}
    assert {tenant for tenant, _ in totals.seconds} >= set(tenants)


def test_days_are_utc_and_ids_count_once() -> None:
    def billed(event_id: str, time: str, seconds: int, kind: str = "UsageBilled") -> dict[str, Any]:
        return {
            "id": event_id, "type": f"xentree.live.UsageLedger.{kind}", "time": time,
            "tenantid": "acme", "data": {"session_id": "s", "seconds": seconds},
        }

    totals = Totals()
    for envelope in [
        billed("l:2", "2026-11-24T23:59:58.5Z", 5),
        billed("l:2", "2026-11-24T23:59:58.5Z", 5),  # republished
        billed("l:3", "2026-11-25T00:30:00+01:00", 7, "SessionClosed"),  # 23:30 UTC
        billed("l:4", "2026-11-25T00:00:03Z", 3),
        {**billed("s:2", "2026-11-25T00:00:03Z", 99), "type": "xentree.live.LiveSession.Billed"},
    ]:
        totals.add(envelope)
    assert totals.rows() == [
        {"tenant": "acme", "day": "2026-11-24", "live_seconds": 12},
        {"tenant": "acme", "day": "2026-11-25", "live_seconds": 3},
    ]
    assert (totals.messages, totals.duplicates, totals.billed_events) == (5, 1, 3)
