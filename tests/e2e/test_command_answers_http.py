"""Command answers at the edges of the contract: a repeated command still says where it
stands (X-Event-Position) and answers the same body, read-your-writes headers are parsed
strictly, and Idempotency-Keys are the caller's own."""

from __future__ import annotations

import secrets
import time

from tests.e2e.conftest import Stack
from tests.e2e.test_sessions_http import problem_of

END = "/api/live/session/end"
START = "/api/live/session/start"


def test_a_non_ascii_digit_in_x_min_position_is_a_400(stack: Stack) -> None:
    u = stack.user()
    r = u.get("/api/live/quota", headers={"X-Min-Position": b"\xb2"})  # latin-1 '²'
    problem_of(r, 400, "invalid_request")


def test_a_repeated_end_still_says_its_position(stack: Stack) -> None:
    u = stack.user()
    sid = u.start()["session_id"]
    first = u.post(END, {"session_id": sid})
    again = u.post(END, {"session_id": sid})
    assert again.status_code == 200 and again.json() == first.json()
    assert int(again.headers["X-Event-Position"]) >= int(first.headers["X-Event-Position"])


def test_a_second_end_answers_the_same_body_after_other_usage(stack: Stack) -> None:
    u = stack.user()
    first_id = u.start()["session_id"]
    time.sleep(1.1)
    first = u.post(END, {"session_id": first_id})
    second_id = u.start()["session_id"]
    time.sleep(1.1)
    assert u.post("/api/live/session/heartbeat", {"session_id": second_id}).status_code == 200
    again = u.post(END, {"session_id": first_id})
    assert again.json() == first.json()


def test_idempotency_keys_never_cross_tenants(stack: Stack) -> None:
    x = secrets.token_hex(4)
    one = {"Authorization": f"Bearer {stack.issuer.mint(f'{x}/b', 'c', None)}"}
    two = {"Authorization": f"Bearer {stack.issuer.mint(x, 'b/c', None)}"}
    key = {"Idempotency-Key": "shared"}
    first = stack.client.post(START, json={"session_type": "voice"}, headers={**one, **key})
    second = stack.client.post(START, json={"session_type": "voice"}, headers={**two, **key})
    assert first.status_code == second.status_code == 201
    assert first.json()["session_id"] != second.json()["session_id"]


def test_a_read_right_after_a_command_reflects_it_without_asking(stack: Stack) -> None:
    """No X-Min-Position: the API remembers the caller's last command and the next read
    waits for its read model to get there (the projection trails by a few milliseconds)."""
    u = stack.user()
    for i in range(8):
        r = u.put("/api/live/profile/nickname", {"nickname": f"nick {i}"})
        assert r.status_code == 200, r.text
        profile = u.get("/api/live/profile")
        assert profile.status_code == 200 and profile.json()["nickname"] == f"nick {i}"
    stored = u.post("/api/live/transcripts", {
        "session_started_at": "2026-04-16T10:00:00Z",
        "session_ended_at": "2026-04-16T10:05:00Z",
        "transcripts": [
            {"role": "user", "text": "Hello Xentree", "timestamp": "2026-04-16T10:00:03Z"},
        ],
    })
    assert stored.status_code == 201, stored.text
    got = u.get(f"/api/live/transcripts/{stored.json()['transcript_id']}")
    assert got.status_code == 200 and got.json()["entry_count"] == 1
    sid = u.start()["session_id"]
    listed = u.get("/api/live/sessions")
    assert listed.json()["items"][0]["session_id"] == sid
    quota = u.get("/api/live/quota").json()
    assert [a["session_id"] for a in quota["active_sessions"]] == [sid]


def test_a_refusal_is_the_answer_a_retry_gets(stack: Stack) -> None:
    """A start refused because a session was active is refused the same way when retried
    with its key after that session has ended: a retry never has a second, later effect."""
    u = stack.user()
    active = u.start()["session_id"]
    key = {"Idempotency-Key": f"refused-{secrets.token_hex(4)}"}
    refused = u.post(START, {"session_type": "voice"}, **key)
    assert problem_of(refused, 409, "session_already_active")["session_id"] == active
    assert u.post(END, {"session_id": active}).status_code == 200
    again = u.post(START, {"session_type": "voice"}, **key)
    assert again.status_code == 409 and again.json() == refused.json()
    assert [s["session_id"] for s in u.get("/api/live/sessions").json()["items"]] == [active]
    # The same key for another request is still a conflict; a new key starts a session.
    problem_of(u.post(START, {"session_type": "avatar"}, **key), 409, "conflict")
    assert u.post(START, {"session_type": "voice"}).status_code == 201


def test_a_retry_may_encode_its_body_anew(stack: Stack) -> None:
    u = stack.user()
    key = {"Idempotency-Key": f"spaced-{secrets.token_hex(4)}", "Content-Type": "application/json"}
    first = stack.client.post(START, content=b'{"session_type":"voice"}',
                              headers={**u.headers, **key})
    again = stack.client.post(START, content=b'{ "session_type" : "voice" }\n',
                              headers={**u.headers, **key})
    assert first.status_code == again.status_code == 201, again.text
    assert again.json() == first.json()


def test_credentials_are_judged_before_the_body(stack: Stack) -> None:
    """A caller without a valid credential hears 401 (or 403 without the scope), however
    wrong the rest of the request is: the body and the query are not looked at first."""
    client = stack.client
    bad_bodies = {
        START: {"session_type": "video"},
        "/api/live/session/heartbeat": {},
        END: {"session_id": 5},
        "/api/live/api-keys": {"scopes": []},
        "/api/live/transcripts": {},
        "/api/integration/grant": {"subject": 1},
        "/api/integration/verify": {"token": 5},
        "/api/integration/revoke": {},
        "/api/integration/revoke-all": {"issued_before": "never"},
    }
    for path, body in bad_bodies.items():
        r = client.post(path, json=body)
        problem_of(r, 401, "unauthenticated")
        assert "WWW-Authenticate" in r.headers, path
        r = client.post(path, content=b"{not json", headers={"Content-Type": "application/json"})
        problem_of(r, 401, "unauthenticated")
    problem_of(client.put("/api/live/profile/nickname", json={"nickname": ""}), 401,
               "unauthenticated")
    for path in ("/api/live/sessions?limit=0", "/api/live/transcripts?limit=0",
                 "/api/live/transcripts?since=junk", "/api/audit/events?limit=0"):
        problem_of(client.get(path), 401, "unauthenticated")
    reader = stack.user("live:read")
    problem_of(reader.post(START, {"session_type": "video"}), 403, "insufficient_scope")
    problem_of(reader.post(END, {}), 403, "insufficient_scope")
    writer = stack.user("live:write")
    problem_of(writer.get("/api/live/transcripts?limit=0"), 403, "insufficient_scope")
