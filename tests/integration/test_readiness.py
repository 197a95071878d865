"""Readiness with the broker unreachable (real PostgreSQL, a port nothing listens on for
Kafka): not ready is an error answer like any other, a problem that names what failed."""

from __future__ import annotations

from pathlib import Path

from litestar.testing import TestClient

from adapters.eventstore.schema import migrate
from adapters.http.app import create_app
from application.settings import Settings
from ops.stack import free_port
from tests.support.services import scratch_database


def test_not_ready_is_a_problem_naming_the_broker(database_url: str, tmp_path: Path) -> None:
    with scratch_database(database_url) as database:
        settings = Settings(
            database_url=database,
            kafka_bootstrap=f"127.0.0.1:{free_port()}",
            state_dir=str(tmp_path),
        )
        migrate(settings)
        with TestClient(app=create_app(settings)) as client:
            r = client.get("/readyz", headers={"X-Request-Id": "ready-1"})
            alive = client.get("/healthz")

    assert r.status_code == 503
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.headers["Retry-After"] and r.headers["X-Request-Id"] == "ready-1"
    body = r.json()
    assert (body["code"], body["status"], body["instance"]) == ("unavailable", 503, "/readyz")
    assert "kafka" in body["detail"] and body["title"] and body["type"]
    assert body["checks"]["kafka"] == "unavailable" and body["checks"]["postgres"] == "ok"
    assert alive.status_code == 200 and alive.json() == {"status": "ok"}
