"""SPEC section 2 conventions on answers the controllers never see (the router's own 404
and 405), the authentication challenge, times in error bodies, and the operations
endpoints."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.test_sessions_http import problem_of

SECURITY_HEADERS = ("cache-control", "x-content-type-options", "x-frame-options")


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/live/no-such-route", 404),
        ("GET", "/nothing/at/all", 404),
        ("GET", "/schema/redoc", 404),  # a documentation page that is not served
        ("GET", "/schema/no/such/page", 404),
        ("POST", "/api/live/quota", 405),
        ("DELETE", "/api/live/session/start", 405),
        ("GET", "/api/live/quota", 401),
    ],
)
def test_every_answer_carries_a_request_id(
    stack: Stack, method: str, path: str, status: int
) -> None:
    r = stack.client.request(method, path)
    problem_of(r, status, r.json()["code"])
    assert len(r.headers["X-Request-Id"]) >= 16
    for name in SECURITY_HEADERS:
        assert r.headers[name], name
    sent = stack.client.request(method, path, headers={"X-Request-Id": "trace 42/a=b"})
    assert sent.headers["X-Request-Id"] == "trace 42/a=b"


def test_an_unusable_request_id_is_replaced(stack: Stack) -> None:
    for sent in (b"x" * 201, b"caf\xe9", b"tab\there"):
        r = stack.client.get("/healthz", headers={"X-Request-Id": sent})
        assert r.status_code == 200
        echoed = r.headers["X-Request-Id"]
        assert echoed.encode("latin-1") != sent and len(echoed) >= 16


def test_the_challenge_says_invalid_token_only_when_a_token_was_sent(stack: Stack) -> None:
    # RFC 6750 section 3.1: no error code when the request carried no credentials.
    r = stack.client.get("/api/live/quota")
    problem_of(r, 401, "unauthenticated")
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="xentree-live"'
    r = stack.client.get("/api/live/quota", headers={"Authorization": "Bearer a.b.c"})
    problem_of(r, 401, "unauthenticated")
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]


def test_quota_exceeded_names_period_end_as_the_quota_does(stack: Stack) -> None:
    u = stack.user()
    u.assign("--plan", "custom", "--seconds", "0")
    body = problem_of(
        u.post("/api/live/session/start", {"session_type": "voice"}), 402, "live_quota_exceeded"
    )
    quota = u.get("/api/live/quota").json()
    assert body["remaining_seconds"] == 0
    # RFC 3339 UTC written one way everywhere, so clients can compare the strings.
    assert body["period_end"] == quota["period_end"]
    assert body["period_end"].endswith("Z")


def test_metrics_are_prometheus_text(stack: Stack) -> None:
    r = stack.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "# TYPE xentree_http_requests_total counter" in r.text


def test_readiness_documents_its_failure_answer(stack: Stack) -> None:
    doc = stack.client.get("/schema/openapi.json").json()
    responses = doc["paths"]["/readyz"]["get"]["responses"]
    assert "application/problem+json" in responses["503"]["content"]


def _samples(stack: Stack) -> dict[str, float]:
    text = stack.client.get("/metrics").text
    return {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in text.splitlines())
        if name and not name.startswith("#")
    }


def test_metrics_count_every_answer_by_route_and_status(stack: Stack) -> None:
    ok = 'xentree_http_requests_total{method="GET",route="/api/live/quota",status="200"}'
    refused = 'xentree_http_requests_total{method="GET",route="/api/live/quota",status="401"}'
    timed = 'xentree_http_request_seconds_count{method="GET",route="/api/live/quota"}'
    u = stack.user()
    before = _samples(stack)
    for _ in range(5):
        assert u.get("/api/live/quota").status_code == 200
    for _ in range(3):
        assert stack.client.get("/api/live/quota").status_code == 401
    after = _samples(stack)
    assert after[ok] - before.get(ok, 0) == 5
    assert after[refused] - before.get(refused, 0) == 3
    assert after[timed] - before.get(timed, 0) == 8
