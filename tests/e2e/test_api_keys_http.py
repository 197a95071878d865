"""API keys: created by bearer users, shown once, hash-only, revocable at once."""

from __future__ import annotations

from tests.e2e.conftest import Stack
from tests.e2e.test_sessions_http import problem_of

KEYS = "/api/live/api-keys"


def test_api_key_create_use_list_revoke(stack: Stack) -> None:
    u = stack.user()
    r = u.post(KEYS, {"scopes": ["live:read"], "name": "dashboard"})
    assert r.status_code == 201, r.text
    issued = r.json()
    key = issued["key"]
    assert key.startswith("xtl_") and issued["scopes"] == ["live:read"]
    as_key = {"X-API-Key": key}
    assert stack.client.get("/api/live/quota", headers=as_key).status_code == 200
    # A read-only key cannot start sessions, and no key may manage keys.
    r = stack.client.post(
        "/api/live/session/start", json={"session_type": "voice"}, headers=as_key
    )
    problem_of(r, 403, "insufficient_scope")
    problem_of(stack.client.get(KEYS, headers=as_key), 403, "insufficient_scope")

    listed = u.get(KEYS).json()["items"]
    assert [k["key_id"] for k in listed] == [issued["key_id"]]
    assert "key" not in listed[0] and listed[0]["revoked_at"] is None
    assert stack.user().get(KEYS).json()["items"] == []  # another user sees none

    stranger = stack.user()
    r = stack.client.delete(f"{KEYS}/{issued['key_id']}", headers=stranger.headers)
    problem_of(r, 404, "not_found")
    r = stack.client.delete(f"{KEYS}/{issued['key_id']}", headers=u.headers)
    assert r.status_code == 200 and r.json()["revoked_at"]
    # Revocation is immediate: the very next request is refused.
    problem_of(stack.client.get("/api/live/quota", headers=as_key), 401, "unauthenticated")


def test_api_key_scopes_are_bounded(stack: Stack) -> None:
    u = stack.user(scope="live:read")
    problem_of(u.post(KEYS, {"scopes": ["live:read"]}), 403, "insufficient_scope")
    w = stack.user()
    problem_of(w.post(KEYS, {"scopes": ["integration:manage"]}), 422, "invalid_request")
    # A scope keys may hold, but the creator does not: not theirs to hand on.
    lacking = problem_of(w.post(KEYS, {"scopes": ["live:read", "audit:read"]}), 403,
                         "insufficient_scope")
    assert lacking["scope"] == "audit:read"
    problem_of(w.post(KEYS, {"scopes": []}), 400, "invalid_request")
    problem_of(w.post(KEYS, {"scopes": "live:read"}), 400, "invalid_request")


def test_api_key_idempotent_replay_never_shows_the_secret_again(stack: Stack) -> None:
    u = stack.user()
    first = u.post(KEYS, {"scopes": ["live:read"]}, **{"Idempotency-Key": "key-1"})
    again = u.post(KEYS, {"scopes": ["live:read"]}, **{"Idempotency-Key": "key-1"})
    assert first.status_code == again.status_code == 201
    assert first.json()["key"].startswith("xtl_") and again.json()["key"] is None
    assert again.json()["key_id"] == first.json()["key_id"]
    assert len(u.get(KEYS).json()["items"]) == 1


def test_cli_created_key_works(stack: Stack) -> None:
    u = stack.user()
    done = stack.cli(
        "api-key", "create", "--tenant", u.tenant, "--user", u.user_id, "--scope", "live:read"
    )
    key = done.stdout.strip().splitlines()[-1]
    r = stack.client.get("/api/live/quota", headers={"X-API-Key": key})
    assert r.status_code == 200, r.text
