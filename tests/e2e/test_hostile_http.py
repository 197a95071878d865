"""Hostile and malformed requests: always a 4xx problem, never a 500, nothing changed."""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import Stack, User
from tests.e2e.test_sessions_http import problem_of

START = "/api/live/session/start"
HEARTBEAT = "/api/live/session/heartbeat"
END = "/api/live/session/end"

BAD_BODIES = [
    b"",
    b"not json",
    b"{",
    b"[]",
    b"null",
    b'"voice"',
    b"{}",
    b'{"session_type": 1}',
    b'{"session_type": "video"}',
    b'{"session_type": "voice", "extra": true}',
    b'{"session_type": ["voice"]}',
    b'{"session_type": "voice\\u0000"}',
    b'{"session_type": "' + b"v" * 100_000 + b'"}',
    b"\xff\xfe\x00garbage",
    b'{"session_type": "voice"' + b" " * 10 + b"}}",
]


def _raw(user: User, path: str, body: bytes, content_type: str = "application/json"):  # type: ignore[no-untyped-def]
    return user.stack.client.post(
        path, content=body, headers={**user.headers, "Content-Type": content_type}
    )


def _nothing_started(user: User) -> None:
    r = user.get("/api/live/sessions")
    assert r.status_code == 200 and r.json()["items"] == []
    # And the write side agrees: a start now is the first one.
    r = user.post(START, {"session_type": "voice"})
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("body", BAD_BODIES, ids=range(len(BAD_BODIES)))
def test_bad_start_bodies_are_400_and_change_nothing(stack: Stack, body: bytes) -> None:
    u = stack.user()
    r = _raw(u, START, body)
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "invalid_request"
    _nothing_started(u)


@pytest.mark.parametrize(
    "body",
    [
        b'{"session_id": 5}',
        b'{"session_id": ""}',
        b'{"session_id": null}',
        b'{"sessionId": "x"}',
        b'{"session_id": "' + b"a" * 65 + b'"}',
        b'{"session_id": "00000000-0000-0000-0000-000000000000", "x": 1}',
    ],
)
def test_bad_heartbeat_and_end_bodies(stack: Stack, body: bytes) -> None:
    u = stack.user()
    for path in (HEARTBEAT, END):
        r = _raw(u, path, body)
        problem_of(r, 400, "invalid_request")


def test_unknown_end_reason_is_rejected(stack: Stack) -> None:
    u = stack.user()
    sid = u.start()["session_id"]
    r = u.post(END, {"session_id": sid, "reason": "quota_exceeded"})
    problem_of(r, 400, "invalid_request")
    r = u.post(HEARTBEAT, {"session_id": sid})
    assert r.status_code == 200


def test_unknown_session_is_404(stack: Stack) -> None:
    u = stack.user()
    r = u.post(HEARTBEAT, {"session_id": "00000000-0000-0000-0000-000000000000"})
    problem_of(r, 404, "not_found")
    r = u.post(HEARTBEAT, {"session_id": "../../etc/passwd"})
    problem_of(r, 404, "not_found")


def test_huge_body_is_413(stack: Stack) -> None:
    u = stack.user()
    body = b'{"session_type": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    r = _raw(u, START, body)
    problem_of(r, 413, "payload_too_large")
    _nothing_started(u)


def test_wrong_content_type_is_refused(stack: Stack) -> None:
    u = stack.user()
    r = _raw(u, START, b"session_type=voice", "application/x-www-form-urlencoded")
    assert 400 <= r.status_code < 500
    _nothing_started(u)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not.a.jwt"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."},
        {"X-API-Key": "xtl_nope"},
        {"X-API-Key": "xtl_" + "a" * 36},
        {"X-Service-Key": "wrong", "X-On-Behalf-Of": "t/u"},
    ],
)
def test_missing_or_bad_credentials_are_401(stack: Stack, headers: dict[str, str]) -> None:
    r = stack.client.post(START, json={"session_type": "voice"}, headers=headers)
    problem_of(r, 401, "unauthenticated")
    assert "Bearer" in r.headers["WWW-Authenticate"]
    r = stack.client.get("/api/live/quota", headers=headers)
    problem_of(r, 401, "unauthenticated")


def test_read_only_token_cannot_write(stack: Stack) -> None:
    u = stack.user(scope="live:read")
    problem_of(u.post(START, {"session_type": "voice"}), 403, "insufficient_scope")
    assert u.get("/api/live/quota").status_code == 200
    w = stack.user(scope="live:write")
    problem_of(w.get("/api/live/quota"), 403, "insufficient_scope")


def test_bad_headers_are_400(stack: Stack) -> None:
    u = stack.user()
    problem_of(
        u.get("/api/live/quota", headers={"X-Min-Position": "-1"}), 400, "invalid_request"
    )
    problem_of(
        u.get("/api/live/quota", headers={"X-Min-Position": "abc"}), 400, "invalid_request"
    )
    r = u.post(START, {"session_type": "voice"}, **{"Idempotency-Key": "k" * 300})
    problem_of(r, 400, "invalid_request")
    _nothing_started(u)


def test_unknown_routes_and_methods_are_problems(stack: Stack) -> None:
    u = stack.user()
    problem_of(u.get("/api/live/nothing-here"), 404, "not_found")
    r = u.get(START)
    assert r.status_code == 405
    assert r.headers["content-type"].startswith("application/problem+json")


def test_a_client_gone_mid_body_is_not_a_server_error(stack: Stack) -> None:
    """A body cut short by a closed connection: no 5xx counted, nothing started."""
    import socket
    from urllib.parse import urlsplit

    u = stack.user()
    target = urlsplit(stack.url)

    def errors() -> float:
        text = stack.client.get("/metrics").text
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("xentree_http_requests_total{")
            and 'status="5' in line and "session/start" in line
        )

    before = errors()
    for _ in range(5):
        with socket.create_connection((target.hostname, target.port), timeout=5) as raw:
            head = (
                f"POST {START} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Authorization: {u.headers['Authorization']}\r\nContent-Length: 100\r\n\r\n"
            )
            raw.sendall(head.encode() + b'{"session_type": ')
    time.sleep(1)
    assert errors() == before
    _nothing_started(u)
