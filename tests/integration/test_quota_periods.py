"""The quota answer at the turn of a month (the API in process with a controllable clock,
real PostgreSQL, real Kafka-fed projections): a new period starts with the whole entitlement
of the plan the user is on, before any ledger of that period exists, and the write side
agrees with what the read said."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from litestar.testing import TestClient

from adapters.auth.dev_issuer import DevIssuer
from adapters.eventstore.schema import migrate
from adapters.http.app import create_app
from adapters.http.services import Services, build_services
from adapters.projector.runner import run_projectors
from adapters.relay.relay import run_relay
from application.settings import Settings
from tests.support.clock import Clock
from tests.support.services import create_topic, unique_topic_name


@dataclass
class Api:
    client: TestClient  # type: ignore[type-arg]
    clock: Clock
    issuer: DevIssuer
    services: Services

    def headers(self, tenant: str, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.issuer.mint(tenant, user, None)}"}

    def quota(self, tenant: str, user: str, position: int = 0) -> dict[str, Any]:
        r = self.client.get("/api/live/quota", headers={
            **self.headers(tenant, user), "X-Min-Position": str(position)})
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def api(database_url: str, kafka_bootstrap: str,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    topic = create_topic(kafka_bootstrap, unique_topic_name("quota-periods"))
    s = Settings(database_url=database_url, kafka_bootstrap=kafka_bootstrap, kafka_topic=topic,
                 state_dir=str(tmp_path_factory.mktemp("state")), read_wait_seconds=20.0)
    migrate(s)
    clock = Clock(datetime(2026, 11, 20, 12, 0, tzinfo=UTC))
    services = replace(build_services(s), now=clock)
    stop = threading.Event()
    workers = [threading.Thread(target=run_relay, args=(s, stop), daemon=True),
               threading.Thread(target=run_projectors, args=(s, stop), daemon=True)]
    for w in workers:
        w.start()
    try:
        with TestClient(app=create_app(s, services=services)) as client:
            yield Api(client, clock, DevIssuer.load_or_create(s), services)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30)
        services.close()


def test_a_new_month_shows_the_plan_the_user_is_on_before_any_usage(api: Api) -> None:
    live, now = api.services.live, api.clock
    pro = live.assign_plan("t-periods", "u-pro", "pro", None, None, now).position or 0
    custom = live.assign_plan("t-periods", "u-custom", "custom", 42, 30, now).position or 0
    november = api.quota("t-periods", "u-pro", pro)
    assert (november["plan"], november["limit_seconds"]) == ("pro", 36_000)
    assert api.quota("t-periods", "u-custom", custom)["limit_seconds"] == 42

    now.at = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
    december = api.quota("t-periods", "u-pro")
    assert december == {
        "plan": "pro",
        "period_start": "2026-12-01T00:00:00Z",
        "period_end": "2027-01-01T00:00:00Z",
        "limit_seconds": 36_000,
        "used_seconds": 0,
        "remaining_seconds": 36_000,
        "max_session_seconds": 3_600,
        "active_sessions": [],
        "as_of": december["as_of"],
    }
    custom_december = api.quota("t-periods", "u-custom")
    assert (custom_december["plan"], custom_december["limit_seconds"],
            custom_december["remaining_seconds"], custom_december["max_session_seconds"]) == (
        "custom", 42, 42, 30)
    # A user never seen before is on the default plan.
    stranger = api.quota("t-periods", "u-new")
    assert (stranger["plan"], stranger["limit_seconds"]) == ("free", 600)

    # The write side opens December's ledger with the same entitlement the read showed.
    r = api.client.post("/api/live/session/start", json={"session_type": "voice"},
                        headers=api.headers("t-periods", "u-pro"))
    assert r.status_code == 201, r.text
    assert r.json()["remaining_seconds"] == 36_000
    opened = api.quota("t-periods", "u-pro", int(r.headers["X-Event-Position"]))
    assert (opened["plan"], opened["limit_seconds"], opened["period_start"]) == (
        "pro", 36_000, "2026-12-01T00:00:00Z")
    assert [s["session_id"] for s in opened["active_sessions"]] == [r.json()["session_id"]]
