"""Bodies built to break the parser rather than the rules: a clear 400 problem, never a
500, and nothing changed."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.test_sessions_http import problem_of

DEEP_BODIES = [
    b"[" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"session_type": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
]
PATHS = [
    "/api/live/session/start",
    "/api/live/session/heartbeat",
    "/api/live/session/end",
    "/api/live/api-keys",
]


@pytest.mark.parametrize("body", DEEP_BODIES, ids=["array", "object", "in-a-field"])
@pytest.mark.parametrize("path", PATHS)
def test_absurdly_nested_json_is_a_400_problem(stack: Stack, path: str, body: bytes) -> None:
    u = stack.user()
    r = stack.client.post(
        path, content=body, headers={**u.headers, "Content-Type": "application/json"}
    )
    assert "nested" in problem_of(r, 400, "invalid_request")["detail"]
    assert u.get("/api/live/sessions").json()["items"] == []
    assert u.get("/api/live/api-keys").json()["items"] == []


@pytest.mark.parametrize(
    ("path", "body", "names"),
    [
        ("/api/live/session/start", b'{"session_type": 1}', "session_type"),
        ("/api/live/session/start", b'{"session_type": "video"}', "session_type"),
        ("/api/live/session/start", b"", "the request needs a JSON body"),
        ("/api/live/session/end", b'{"session_id": "x", "reason": null}', "reason"),
        ("/api/live/api-keys", b'{"scopes": [1]}', "scopes[0]"),
    ],
)
def test_a_bad_value_is_named_in_the_detail(
    stack: Stack, path: str, body: bytes, names: str
) -> None:
    u = stack.user()
    r = stack.client.post(
        path, content=body, headers={**u.headers, "Content-Type": "application/json"}
    )
    assert problem_of(r, 400, "invalid_request")["detail"].startswith(names)


def test_a_bad_query_parameter_is_named_in_the_detail(stack: Stack) -> None:
    u = stack.user()
    r = u.get("/api/live/sessions", params={"limit": 1000})
    assert problem_of(r, 400, "invalid_request")["detail"].startswith("limit")
