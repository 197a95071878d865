"""The profile and nickname through HTTP against the real processes."""

from __future__ import annotations

from typing import Any

import httpx

from tests.e2e.conftest import Stack, User
from tests.e2e.test_sessions_http import problem_of, wait_until

PROFILE = "/api/live/profile"
NICKNAME = "/api/live/profile/nickname"


def read_after(u: User, position: str) -> dict[str, Any]:
    """The profile once it reflects `position` (a 503 says retry: the projector may still
    be joining its consumer group right after the stack started)."""

    def attempt() -> dict[str, Any] | None:
        r = u.get(PROFILE, headers={"X-Min-Position": position})
        if r.status_code == 503:
            return None
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    result: dict[str, Any] = wait_until(attempt, timeout=30)
    return result


def put_nickname(u: User, nickname: object, **headers: str) -> httpx.Response:
    return u.stack.client.put(
        NICKNAME, json={"nickname": nickname}, headers={**u.headers, **headers}
    )


def test_profile_defaults_and_read_your_writes(stack: Stack) -> None:
    u = stack.user()
    r = u.get(PROFILE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["user_id"], body["tenant_id"], body["nickname"], body["plan"]) == (
        u.user_id, u.tenant, None, "free"
    )

    r = put_nickname(u, "  Zoe\u0308 ")  # trimmed, and NFC turns e + diaeresis into ë
    assert r.status_code == 200, r.text
    assert r.json() == {
        "user_id": u.user_id, "tenant_id": u.tenant, "nickname": "Zoë", "plan": "free"
    }
    position = r.headers["X-Event-Position"]
    body = read_after(u, position)
    assert body["nickname"] == "Zoë" and body["as_of"] >= int(position)

    # The same nickname again appends nothing: no new event, so it stands where it was.
    again = put_nickname(u, "Zoë")
    assert again.status_code == 200 and again.json()["nickname"] == "Zoë"
    assert again.headers["X-Event-Position"] == position

    r = put_nickname(u, "Zed")
    assert r.status_code == 200 and r.json()["nickname"] == "Zed"
    assert int(r.headers["X-Event-Position"]) > int(position)
    assert read_after(u, r.headers["X-Event-Position"])["nickname"] == "Zed"


def test_a_plan_assignment_shows_in_the_profile(stack: Stack) -> None:
    u = stack.user()
    u.assign("--plan", "pro")
    wait_until(lambda: u.get(PROFILE).json()["plan"] == "pro")
    r = put_nickname(u, "Pro user")
    assert r.json()["plan"] == "pro"


def test_each_nickname_rule_answers_422_naming_it(stack: Stack) -> None:
    u = stack.user()
    cases = {
        "": "empty",
        "   ": "empty",
        "x" * 33: "at most 32 characters",
        "a" + "\u0301" * 200: "combining marks",
        "evil\u202egnp": "format characters (found U+202E)",
        "ad\u200dmin": "format characters (found U+200D)",
        "nul\x00": "control characters (found U+0000)",
        "\u0301abc": "combining mark",
        "\u3164": "visible character",
    }
    for nickname, rule in cases.items():
        body = problem_of(put_nickname(u, nickname), 422, "invalid_request")
        assert body["field"] == "nickname" and rule in body["detail"], (nickname, body)
    assert u.get(PROFILE).json()["nickname"] is None  # nothing was stored


def test_bad_bodies_and_credentials(stack: Stack) -> None:
    u = stack.user()
    # A body of the wrong shape is 422 naming the field, like a nickname breaking a rule.
    for nickname in (42, None, ["Ana"], {"text": "Ana"}, True):
        assert problem_of(put_nickname(u, nickname), 422, "invalid_request")["field"] == (
            "nickname"
        )
    r = stack.client.put(
        NICKNAME, json={"nickname": "A", "extra": 1}, headers=u.headers
    )
    assert problem_of(r, 422, "invalid_request")["field"] == "extra"
    r = stack.client.put(NICKNAME, json={}, headers=u.headers)
    assert problem_of(r, 422, "invalid_request")["field"] == "nickname"
    for raw in (b"", b"{", b"nickname=Ana"):
        r = stack.client.put(
            NICKNAME, content=raw, headers={**u.headers, "Content-Type": "application/json"}
        )
        assert problem_of(r, 400, "invalid_request")["detail"] != "'data'"
    # U+001C-U+001F count as white space to Python's strip(); they are control characters.
    body = problem_of(put_nickname(u, "\x1fAna"), 422, "invalid_request")
    assert "control characters (found U+001F)" in body["detail"]
    assert u.get(PROFILE).json()["nickname"] is None  # nothing was stored
    reader = stack.user(scope="live:read")
    problem_of(put_nickname(reader, "Reader"), 403, "insufficient_scope")
    problem_of(stack.client.get(PROFILE), 401, "unauthenticated")
    # Idempotency-Key honoured on the nickname command too.
    first = put_nickname(u, "Kay", **{"Idempotency-Key": "nick-1"})
    replay = put_nickname(u, "Kay", **{"Idempotency-Key": "nick-1"})
    assert first.status_code == replay.status_code == 200 and first.json() == replay.json()
    problem_of(put_nickname(u, "Other", **{"Idempotency-Key": "nick-1"}), 409, "conflict")
