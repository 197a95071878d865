"""A rule-based state machine drives the HTTP API (in process, real PostgreSQL, real
Kafka-fed projections) with a controllable clock, against a small independent model of
billing; the quota read model must always equal the model."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from litestar.testing import TestClient

from adapters.auth.dev_issuer import DevIssuer
from adapters.eventstore.schema import migrate
from adapters.http.app import create_app
from adapters.http.services import build_services
from adapters.projector.runner import run_projectors
from adapters.relay.relay import run_relay
from application.settings import PlanDefaults, Settings
from tests.support.clock import Clock

IDLE = 20
MAX_SESSION = 90


@dataclass
class Harness:
    client: TestClient  # type: ignore[type-arg]
    clock: Clock
    issuer: DevIssuer
    settings: Settings


@pytest.fixture(scope="module")
def harness(
    database_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    from tests.support.services import create_topic, unique_topic_name

    topic = create_topic(kafka_bootstrap, unique_topic_name("billing-model"))
    s = Settings(
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic=topic,
        state_dir=str(tmp_path_factory.mktemp("state")),
        idle_timeout_seconds=IDLE,
        plans=PlanDefaults(free_seconds=150, max_session_seconds=MAX_SESSION),
        read_wait_seconds=20.0,
    )
    migrate(s)
    clock = Clock()
    services = replace(build_services(s), now=clock)
    stop = threading.Event()
    workers = [
        threading.Thread(target=run_relay, args=(s, stop), daemon=True),
        threading.Thread(target=run_projectors, args=(s, stop), daemon=True),
    ]
    for w in workers:
        w.start()
    try:
        with TestClient(app=create_app(s, services=services)) as client:
            yield Harness(client, clock, DevIssuer.load_or_create(s), s)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30)
        services.close()


@dataclass
class ModelSession:
    session_id: str
    bill_point_ms: int
    last_seen_ms: int
    seconds: int = 0


class BillingModel:
    """Whole seconds from a bill point; the idle window from the last heartbeat; stop at
    the entitlement or the maximum session length."""

    def __init__(self, now_ms: int, limit: int) -> None:
        self.now_ms = now_ms
        self.limit = limit
        self.used = 0
        self.active: ModelSession | None = None

    def allowed(self, s: ModelSession) -> int:
        return max(0, min(self.limit - self.used, MAX_SESSION - s.seconds))

    def overdue(self, s: ModelSession) -> tuple[int, str] | None:
        """(seconds, reason) if the session is over at now, else None."""
        allowed = self.allowed(s)
        limit_at = s.bill_point_ms + allowed * 1000
        if limit_at <= s.last_seen_ms + IDLE * 1000 and self.now_ms >= limit_at:
            return allowed, self.limit_reason(s)
        if self.now_ms >= s.last_seen_ms + IDLE * 1000:
            return 0, "idle_timeout"
        return None

    def limit_reason(self, s: ModelSession) -> str:
        return "quota_exceeded" if self.limit - self.used <= MAX_SESSION - s.seconds else (
            "max_duration"
        )

    def bill(self) -> tuple[int, str | None]:
        s = self.active
        assert s is not None
        over = self.overdue(s)
        if over is not None:
            self.charge(over[0])
            self.active = None
            return over
        gap = (self.now_ms - s.bill_point_ms) // 1000
        allowed = self.allowed(s)
        if gap >= allowed:
            reason = self.limit_reason(s)
            self.charge(allowed)
            self.active = None
            return allowed, reason
        self.charge(gap)
        s.bill_point_ms += gap * 1000
        s.last_seen_ms = self.now_ms
        return gap, None

    def charge(self, seconds: int) -> None:
        assert self.active is not None
        self.active.seconds += seconds
        self.used += seconds


@settings(
    max_examples=8,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
class BillingMachine(RuleBasedStateMachine):
    harness: Harness

    @initialize()
    def new_user(self) -> None:
        import secrets

        h = self.harness
        self.tenant, self.user = f"t-{secrets.token_hex(3)}", f"u-{secrets.token_hex(3)}"
        token = h.issuer.mint(self.tenant, self.user, "live:read live:write", 36000)
        self.headers = {"Authorization": f"Bearer {token}"}
        self.position = 0
        self.model = BillingModel(self._now_ms(), 150)

    def _now_ms(self) -> int:
        return int(self.harness.clock.at.timestamp() * 1000)

    def _post(self, path: str, body: dict[str, str]):  # type: ignore[no-untyped-def]
        r = self.harness.client.post(path, json=body, headers=self.headers)
        if "X-Event-Position" in r.headers:
            self.position = max(self.position, int(r.headers["X-Event-Position"]))
        return r

    @rule(ms=st.integers(0, 30_000))
    def advance(self, ms: int) -> None:
        self.harness.clock.advance(ms / 1000)
        self.model.now_ms = self._now_ms()

    @rule(session_type=st.sampled_from(["voice", "avatar"]))
    def start(self, session_type: str) -> None:
        if self.model.active is not None and self.model.overdue(self.model.active) is None:
            r = self._post("/api/live/session/start", {"session_type": session_type})
            assert r.status_code == 409, r.text
            return
        if self.model.active is not None:
            # The model's session is over, but only a command or the reaper records it.
            self.reap()
        r = self._post("/api/live/session/start", {"session_type": session_type})
        if self.model.limit - self.model.used <= 0:
            assert r.status_code == 402, r.text
            return
        assert r.status_code == 201, r.text
        now = self._now_ms()
        self.model.active = ModelSession(r.json()["session_id"], now, now)
        assert r.json()["remaining_seconds"] == self.model.limit - self.model.used

    @rule()
    def heartbeat(self) -> None:
        if self.model.active is None:
            return
        sid = self.model.active.session_id
        r = self._post("/api/live/session/heartbeat", {"session_id": sid})
        seconds, reason = self.model.bill()
        if reason is None:
            assert r.status_code == 200, r.text
            assert r.json()["billed_seconds"] == seconds
            assert r.json()["remaining_seconds"] == self.model.limit - self.model.used
        elif reason == "quota_exceeded":
            assert r.status_code == 402, r.text
        else:
            assert r.status_code == 409 and r.json()["end_reason"] == reason, r.text

    @rule()
    def end(self) -> None:
        if self.model.active is None:
            return
        s = self.model.active
        r = self._post("/api/live/session/end", {"session_id": s.session_id})
        assert r.status_code == 200, r.text
        _, reason = self.model.bill()
        if reason is None:
            self.model.active = None
            reason = "client"
        assert r.json()["end_reason"] == reason
        assert r.json()["session_seconds"] == s.seconds

    @rule()
    def reap(self) -> None:
        if self.model.active is None:
            return
        from uuid import UUID

        s = self.model.active
        over = self.model.overdue(s)
        ended = self.harness.client.app.state.services.live.reap(
            UUID(s.session_id), self.harness.clock
        ).end_reason
        if over is None:
            assert ended is None
            return
        self._caught_up_to_head()
        self.model.bill()
        assert ended == over[1]
        r = self._post("/api/live/session/end", {"session_id": s.session_id})
        assert r.json()["end_reason"] == over[1] and r.json()["session_seconds"] == s.seconds

    @rule(seconds=st.integers(0, 300))
    def assign_plan(self, seconds: int) -> None:
        answer = self.harness.client.app.state.services.live.assign_plan(
            self.tenant, self.user, "custom", seconds, MAX_SESSION, self.harness.clock
        )
        if answer.position is not None:
            self.position = max(self.position, answer.position)
        self.model.limit = seconds

    def _caught_up_to_head(self) -> None:
        # The reaper's events have no answer to carry a position: read up to the head.
        head = self.harness.client.app.state.services.live.recorder.max_notification_id()
        self.position = max(self.position, head or 0)

    @invariant()
    def quota_read_model_equals_the_model(self) -> None:
        if not hasattr(self, "model"):
            return
        r = self.harness.client.get(
            "/api/live/quota", headers={**self.headers, "X-Min-Position": str(self.position)}
        )
        assert r.status_code == 200, r.text
        q = r.json()
        assert q["used_seconds"] == self.model.used
        assert q["limit_seconds"] == self.model.limit
        active = [a["session_id"] for a in q["active_sessions"]]
        assert active == ([] if self.model.active is None else [self.model.active.session_id])


def test_http_billing_matches_the_model(harness: Harness) -> None:
    BillingMachine.harness = harness
    BillingMachine.TestCase().runTest()
