"""The session lifecycle through HTTP against the real processes."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx

from tests.e2e.conftest import Stack

START = "/api/live/session/start"
KEY = {"Idempotency-Key": "a1"}


def wait_until(check, timeout: float = 15.0, every: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(every)


def problem_of(r: httpx.Response, status: int, code: str) -> dict:  # type: ignore[type-arg]
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["code"] == code and body["status"] == status and body["detail"]
    return body


def test_lifecycle_start_heartbeat_end_and_reads(stack: Stack) -> None:
    u = stack.user()
    started = u.start("avatar")
    sid = started["session_id"]
    assert started["session_type"] == "avatar"
    assert started["remaining_seconds"] == 600
    assert started["heartbeat_interval_seconds"] == 1 and started["idle_timeout_seconds"] == 3
    ends_at = datetime.fromisoformat(started["session_ends_at"])
    assert (ends_at - datetime.fromisoformat(started["started_at"])).total_seconds() == 600
    time.sleep(1.2)
    r = u.post("/api/live/session/heartbeat", {"session_id": sid})
    assert r.status_code == 200, r.text
    assert r.json()["billed_seconds"] == 1 and r.json()["remaining_seconds"] == 599
    time.sleep(1.0)
    r = u.post("/api/live/session/end", {"session_id": sid})
    assert r.status_code == 200, r.text
    ended = r.json()
    assert ended["end_reason"] == "client" and ended["session_seconds"] == 2
    position = r.headers["X-Event-Position"]
    again = u.post("/api/live/session/end", {"session_id": sid})
    assert again.status_code == 200 and again.json() == ended

    r = u.get("/api/live/quota", headers={"X-Min-Position": position})
    assert r.status_code == 200, r.text
    quota = r.json()
    assert quota["used_seconds"] == 2 and quota["remaining_seconds"] == 598
    assert quota["active_sessions"] == [] and quota["as_of"] >= int(position)

    r = u.get(f"/api/live/sessions/{sid}", headers={"X-Min-Position": position})
    assert r.status_code == 200, r.text
    view = r.json()
    assert (view["status"], view["end_reason"], view["session_seconds"]) == ("ended", "client", 2)

    r = u.post("/api/live/session/heartbeat", {"session_id": sid})
    assert problem_of(r, 409, "session_not_active")["end_reason"] == "client"


def test_sessions_list_is_newest_first_and_paginated(stack: Stack) -> None:
    u = stack.user()
    ids = []
    position = "0"
    for _ in range(3):
        sid = u.start()["session_id"]
        r = u.post("/api/live/session/end", {"session_id": sid})
        ids.append(sid)
        position = r.headers["X-Event-Position"]
    seen = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        r = u.get("/api/live/sessions", params=params, headers={"X-Min-Position": position})
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [s["session_id"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    r = u.get("/api/live/sessions", params={"cursor": "not-a-cursor!"})
    problem_of(r, 400, "invalid_request")
    r = u.get("/api/live/sessions", params={"limit": 0})
    problem_of(r, 400, "invalid_request")


def test_quota_exhaustion_bills_exactly_to_the_limit(stack: Stack) -> None:
    u = stack.user()
    u.assign("--plan", "custom", "--seconds", "2")
    sid = u.start()["session_id"]
    time.sleep(3.2)  # under the 3 s idle cap, but past the 2 s left
    r = u.post("/api/live/session/heartbeat", {"session_id": sid})
    body = problem_of(r, 402, "live_quota_exceeded")
    assert body["remaining_seconds"] == 0 and body["period_end"]
    r = u.post("/api/live/session/heartbeat", {"session_id": sid})
    problem_of(r, 402, "live_quota_exceeded")
    r = u.post("/api/live/session/start", {"session_type": "voice"})
    problem_of(r, 402, "live_quota_exceeded")
    r = u.post("/api/live/session/end", {"session_id": sid})
    assert r.json()["end_reason"] == "quota_exceeded" and r.json()["session_seconds"] == 2
    position = r.headers.get("X-Event-Position")
    quota = wait_until(
        lambda: (q := u.get("/api/live/quota").json())["used_seconds"] == 2 and q
    )
    assert quota["remaining_seconds"] == 0 and quota["limit_seconds"] == 2
    assert quota["plan"] == "custom"
    # The second end wrote nothing: it stands at the session's last event, its end.
    assert position is not None and position.isdigit()


def test_idle_sessions_are_reaped_billed_to_the_last_heartbeat(stack: Stack) -> None:
    u = stack.user()
    sid = u.start()["session_id"]
    time.sleep(1.1)
    r = u.post("/api/live/session/heartbeat", {"session_id": sid})
    assert r.json()["session_seconds"] == 1

    def ended() -> dict | None:  # type: ignore[type-arg]
        r = u.post("/api/live/session/heartbeat", {"session_id": sid})
        return r.json() if r.status_code == 409 else None

    time.sleep(3.5)
    body = wait_until(ended, timeout=10)
    assert body["end_reason"] == "idle_timeout"
    r = u.post("/api/live/session/end", {"session_id": sid})
    assert r.json()["session_seconds"] == 1 and r.json()["end_reason"] == "idle_timeout"


def test_max_duration_ends_the_session_at_its_length(stack: Stack) -> None:
    u = stack.user()
    u.assign("--plan", "pro", "--max-session-seconds", "2")
    sid = u.start()["session_id"]
    for _ in range(4):
        time.sleep(0.8)
        r = u.post("/api/live/session/heartbeat", {"session_id": sid})
        if r.status_code != 200:
            break
    body = problem_of(r, 409, "session_not_active")
    assert body["end_reason"] == "max_duration"
    r = u.post("/api/live/session/end", {"session_id": sid})
    assert r.json()["session_seconds"] == 2


def test_max_duration_is_enforced_by_the_reaper_without_heartbeats(stack: Stack) -> None:
    u = stack.user()
    u.assign("--plan", "pro", "--max-session-seconds", "1")
    sid = u.start()["session_id"]
    time.sleep(1.5)
    r = wait_until(
        lambda: (
            x := u.get(f"/api/live/sessions/{sid}")
        ).status_code == 200 and x.json()["status"] == "ended" and x
    )
    assert r.json()["end_reason"] == "max_duration" and r.json()["session_seconds"] == 1


def test_another_users_session_is_404(stack: Stack) -> None:
    owner, other = stack.user(), stack.user()
    sid = owner.start()["session_id"]
    for path in ("/api/live/session/heartbeat", "/api/live/session/end"):
        problem_of(other.post(path, {"session_id": sid}), 404, "not_found")
    problem_of(other.get(f"/api/live/sessions/{sid}"), 404, "not_found")
    problem_of(other.get("/api/live/sessions/not-a-uuid"), 404, "not_found")
    # And it is still the owner's, untouched.
    r = owner.post("/api/live/session/end", {"session_id": sid})
    assert r.status_code == 200 and r.json()["end_reason"] == "client"


def test_second_session_is_refused_with_the_active_id(stack: Stack) -> None:
    u = stack.user()
    sid = u.start()["session_id"]
    body = problem_of(
        u.post("/api/live/session/start", {"session_type": "voice"}), 409,
        "session_already_active",
    )
    assert body["session_id"] == sid


def test_idempotency_key_replays_the_first_answer(stack: Stack) -> None:
    u = stack.user()
    first = u.post(START, {"session_type": "voice"}, **KEY)
    again = u.post(START, {"session_type": "voice"}, **KEY)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert first.headers["X-Event-Position"] == again.headers["X-Event-Position"]
    other = u.post(START, {"session_type": "avatar"}, **KEY)
    problem_of(other, 409, "conflict")
    # Another user's identical key is theirs alone.
    v = stack.user()
    mine = v.post(START, {"session_type": "voice"}, **KEY)
    assert mine.status_code == 201 and mine.json()["session_id"] != first.json()["session_id"]


def test_parallel_heartbeats_and_starts_never_double_bill(stack: Stack) -> None:
    u = stack.user()
    sid = u.start()["session_id"]
    time.sleep(2.2)
    with ThreadPoolExecutor(max_workers=25) as pool:
        answers = list(
            pool.map(
                lambda _: u.post("/api/live/session/heartbeat", {"session_id": sid}), range(50)
            )
        )
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    billed = sum(a.json()["billed_seconds"] for a in answers)
    end = u.post("/api/live/session/end", {"session_id": sid})
    total = end.json()["session_seconds"]
    assert billed == max(a.json()["session_seconds"] for a in answers)
    assert 2 <= total <= 3

    with ThreadPoolExecutor(max_workers=10) as pool:
        starts = list(
            pool.map(
                lambda _: u.post("/api/live/session/start", {"session_type": "voice"}),
                range(10),
            )
        )
    assert sorted(s.status_code for s in starts) == [201] + [409] * 9
    created = next(s for s in starts if s.status_code == 201).json()["session_id"]
    end = u.post("/api/live/session/end", {"session_id": created})
    used = total + end.json()["session_seconds"]
    position = end.headers["X-Event-Position"]
    quota = u.get("/api/live/quota", headers={"X-Min-Position": position}).json()
    assert quota["used_seconds"] == used and quota["active_sessions"] == []


def test_active_sessions_appear_in_the_quota(stack: Stack) -> None:
    u = stack.user()
    r = u.post("/api/live/session/start", {"session_type": "avatar"})
    sid = r.json()["session_id"]
    quota = u.get("/api/live/quota", headers={"X-Min-Position": r.headers["X-Event-Position"]})
    assert quota.json()["active_sessions"] == [
        {"session_id": sid, "session_type": "avatar", "started_at": r.json()["started_at"]}
    ]


def test_request_id_is_echoed_or_made(stack: Stack) -> None:
    u = stack.user()
    r = u.get("/api/live/quota", headers={"X-Request-Id": "trace-123"})
    assert r.headers["X-Request-Id"] == "trace-123"
    r = stack.client.get("/api/live/quota")
    assert len(r.headers["X-Request-Id"]) >= 16


def test_openapi_health_and_metrics_are_served(stack: Stack) -> None:
    doc = stack.client.get("/schema/openapi.json")
    assert doc.status_code == 200
    paths = doc.json()["paths"]
    for p in ("/api/live/session/start", "/api/live/quota", "/api/live/api-keys"):
        assert p in paths
    assert stack.client.get("/schema/swagger").status_code == 200
    assert stack.client.get("/healthz").json() == {"status": "ok"}
    ready = wait_until(lambda: (r := stack.client.get("/readyz")).status_code == 200 and r)
    assert ready.json()["checks"]["postgres"] == "ok"
    metrics = stack.client.get("/metrics")
    assert "xentree_http_requests_total" in metrics.text


def test_read_your_writes_times_out_with_503(stack: Stack) -> None:
    u = stack.user()
    r = u.get("/api/live/quota", headers={"X-Min-Position": str(10**15)})
    body = problem_of(r, 503, "unavailable")
    assert r.headers["Retry-After"] and body


def test_user_seen_as_active_in_quota_then_time_passes(stack: Stack) -> None:
    # The heartbeat answer's remaining seconds match the quota read model afterwards.
    u = stack.user()
    u.assign("--plan", "custom", "--seconds", "100")
    sid = u.start()["session_id"]
    time.sleep(1.1)
    hb = u.post("/api/live/session/heartbeat", {"session_id": sid})
    quota = u.get("/api/live/quota", headers={"X-Min-Position": hb.headers["X-Event-Position"]})
    assert quota.json()["remaining_seconds"] == hb.json()["remaining_seconds"] == 99


