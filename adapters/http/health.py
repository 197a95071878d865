"""Liveness, readiness and metrics."""

from __future__ import annotations

import socket
from typing import Any

from litestar import Controller, Request, Response, get
from prometheus_client import Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from adapters.http.commands import in_thread, services_of
from adapters.http.problems import problem
from adapters.http.schemas import READY_PROBLEMS
from adapters.readmodels import watermark

PROJECTIONS = (
    "quota", "sessions", "profile", "transcripts", "revocations", "revocation_cutoffs"
)
LAG = Gauge("xentree_projection_lag_events", "Events stored but not yet projected", ["projection"])


def _broker_reachable(bootstrap: str) -> bool:
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=1).close()
            return True
        except (OSError, ValueError):
            continue
    return False


class HealthController(Controller):
    path = "/"
    tags = ["operations"]
    include_in_schema = True

    @get("/healthz", operation_id="healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz", operation_id="readyz", responses=READY_PROBLEMS)
    async def readyz(self, request: Request[Any, Any, Any]) -> Response[Any]:
        services = services_of(request)

        def check() -> dict[str, Any]:
            checks: dict[str, Any] = {}
            try:
                with services.read() as conn:
                    head = conn.execute(
                        "SELECT coalesce(max(notification_id), 0) AS head "
                        "FROM xentree_live_events"
                    ).fetchone()
                    marks = {p: watermark(conn, p) for p in PROJECTIONS}
                checks["postgres"] = "ok"
                position = int(head["head"]) if head else 0
                lags = {p: max(0, position - m) for p, m in marks.items()}
                for p, lag in lags.items():
                    LAG.labels(p).set(lag)
                checks["projections"] = {
                    p: {"as_of": marks[p], "lag": lag} for p, lag in lags.items()
                }
                caught_up = all(
                    lag <= services.settings.readiness_max_lag for lag in lags.values()
                )
                checks["projections_caught_up"] = caught_up
            except Exception as exc:  # any failure here means: not ready
                checks["postgres"] = f"unavailable: {type(exc).__name__}"
                checks["projections_caught_up"] = False
            checks["kafka"] = (
                "ok" if _broker_reachable(services.settings.kafka_bootstrap) else "unavailable"
            )
            return checks

        checks = await in_thread(check)
        failing = [name for name in ("postgres", "kafka") if checks[name] != "ok"]
        if not checks["projections_caught_up"]:
            failing.append("projections")
        if not failing:
            return Response({"status": "ready", "checks": checks})
        # Not ready is an error answer like any other: a problem, with the checks beside it.
        return problem(
            request,
            503,
            "unavailable",
            f"not ready: {', '.join(failing)}",
            {"Retry-After": "2"},
            checks=checks,
        )

    @get(
        "/metrics",
        operation_id="metrics",
        # The classic Prometheus text format, which every scraper reads; Litestar adds
        # the charset itself.
        media_type=CONTENT_TYPE_PLAIN_0_0_4.removesuffix("; charset=utf-8"),
    )
    async def metrics(self) -> bytes:
        return generate_latest()
