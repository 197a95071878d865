"""Transcripts through HTTP against the real processes: the seed's payload, validation,
credentials, listing with filters and cursors, BOLA, and a 5,000-entry round trip."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from adapters.auth.service_keys import dev_service_key
from application.settings import load_settings
from tests.e2e.conftest import Stack, User
from tests.e2e.test_sessions_http import problem_of, wait_until

TRANSCRIPTS = "/api/live/transcripts"
SEED: dict[str, Any] = {
    "session_started_at": "2026-04-16T10:00:00Z",
    "session_ended_at": "2026-04-16T10:05:00Z",
    "transcripts": [
        {"role": "user", "text": "Hello Xentree", "timestamp": "2026-04-16T10:00:03Z"},
        {"role": "ai", "text": "Hi, how can I help you today?",
         "timestamp": "2026-04-16T10:00:05Z"},
    ],
}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def stamp(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def payload(started: datetime, entries: int = 2, **extra: Any) -> dict[str, Any]:
    return {
        "session_started_at": stamp(started),
        "session_ended_at": stamp(started + timedelta(hours=2)),
        "transcripts": [
            {"role": "user" if i % 2 == 0 else "ai", "text": f"line {i}",
             "timestamp": stamp(started + timedelta(seconds=i))}
            for i in range(entries)
        ],
        **extra,
    }


def store(u: User, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    r = u.post(TRANSCRIPTS, body, **headers)
    assert r.status_code == 201, r.text
    stored: dict[str, Any] = r.json()
    stored["position"] = r.headers["X-Event-Position"]
    return stored


def caught_up(u: User, path: str, position: str, **kw: Any) -> httpx.Response:
    """A read once the projection reflects `position` (a 503 says retry: the projector
    may still be joining its consumer group right after the stack started)."""

    def attempt() -> httpx.Response | None:
        r = u.get(path, headers={"X-Min-Position": position}, **kw)
        return None if r.status_code == 503 else r

    response: httpx.Response = wait_until(attempt, timeout=30)
    return response


def read(u: User, transcript_id: str, position: str) -> dict[str, Any]:
    r = caught_up(u, f"{TRANSCRIPTS}/{transcript_id}", position)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def pages(u: User, position: str, limit: int, **filters: str) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": limit, **filters}
        if cursor:
            params["cursor"] = cursor
        r = caught_up(u, TRANSCRIPTS, position, params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= limit
        seen += [t["transcript_id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


def test_the_seed_payload_round_trips(stack: Stack) -> None:
    u = stack.user()
    stored = store(u, SEED)
    assert stored["entry_count"] == 2 and stored["session_id"] is None
    assert stored["transcript_id"] and stored["created_at"]
    got = read(u, stored["transcript_id"], stored["position"])
    assert got["session_started_at"] == SEED["session_started_at"]
    assert got["session_ended_at"] == SEED["session_ended_at"]
    assert got["status"] == "complete" and got["entry_count"] == 2
    assert [
        {k: e[k] for k in ("role", "text", "timestamp")} for e in got["transcripts"]
    ] == SEED["transcripts"]
    assert not any(e["interrupted"] for e in got["transcripts"])
    assert got["as_of"] >= int(stored["position"])


def test_each_validation_rule_answers_422_naming_the_entry(stack: Stack) -> None:
    u = stack.user()

    def entry_broken(index: int, **change: object) -> dict[str, Any]:
        body = payload(T0, 20)
        body["transcripts"][index].update(change)
        return body

    cases: list[tuple[dict[str, Any], str, str]] = [
        (entry_broken(12, role="system"), "transcripts[12].role", "'user' or 'ai'"),
        (entry_broken(12, text=""), "transcripts[12].text", "1-10000"),
        (entry_broken(3, text="x" * 10_001), "transcripts[3].text", "1-10000"),
        (entry_broken(7, timestamp="16/04/2026 10:00"), "transcripts[7].timestamp",
         "RFC 3339"),
        (entry_broken(7, timestamp="2026-01-01T00:00:07"), "transcripts[7].timestamp",
         "RFC 3339"),
        (entry_broken(9, timestamp=stamp(T0 - timedelta(days=1))), "transcripts[9].timestamp",
         "earlier"),
        ({**payload(T0), "session_ended_at": stamp(T0 - timedelta(seconds=1))},
         "session_ended_at", "before session_started_at"),
        ({**payload(T0), "session_started_at": "soon"}, "session_started_at", "RFC 3339"),
        (payload(T0, 5_001), "transcripts", "at most 5000"),
    ]
    for body, field, rule in cases:
        problem = problem_of(u.post(TRANSCRIPTS, body), 422, "invalid_request")
        assert problem["field"] == field and rule in problem["detail"], (field, problem)
    # Wrong types, missing and unknown fields are 422 too, naming the entry's index; no
    # coercion: "true" is not a boolean.
    shape_cases: list[tuple[dict[str, Any], str]] = [
        ({**payload(T0), "extra": 1}, "extra"),
        (entry_broken(12, text=5), "transcripts[12].text"),
        (entry_broken(4, role=None), "transcripts[4].role"),
        (entry_broken(6, interrupted="true"), "transcripts[6].interrupted"),
        (entry_broken(6, interrupted=1), "transcripts[6].interrupted"),
        (entry_broken(8, mood="happy"), "transcripts[8].mood"),
        ({**payload(T0), "session_started_at": 1776333600}, "session_started_at"),
        ({**payload(T0), "transcripts": [*payload(T0)["transcripts"], 5]}, "transcripts[2]"),
        ({**payload(T0), "transcripts": None}, "transcripts"),
    ]
    missing = payload(T0, 20)
    del missing["transcripts"][15]["timestamp"]
    shape_cases.append((missing, "transcripts[15].timestamp"))
    for body, field in shape_cases:
        problem = problem_of(u.post(TRANSCRIPTS, body), 422, "invalid_request")
        assert problem["field"] == field and field.split(".")[0] in problem["detail"], problem
    # Times that exist in their own offset but not in UTC: refused, not a crash.
    for body, field in (
        (entry_broken(2, timestamp="0001-01-01T00:00:00+01:00"), "transcripts[2].timestamp"),
        (entry_broken(2, timestamp="9999-12-31T23:59:59-23:59"), "transcripts[2].timestamp"),
        ({**payload(T0), "session_started_at": "0001-01-01T00:30:00+01:00"},
         "session_started_at"),
        ({**payload(T0), "session_ended_at": "9999-12-31T23:00:00-23:00"}, "session_ended_at"),
    ):
        problem = problem_of(u.post(TRANSCRIPTS, body), 422, "invalid_request")
        assert problem["field"] == field, problem
    problem_of(u.post(TRANSCRIPTS, None), 400, "invalid_request")  # no body at all
    # Nothing was stored.
    assert u.get(TRANSCRIPTS).json()["items"] == []


def test_credentials(stack: Stack) -> None:
    u = stack.user()
    r = u.post("/api/live/api-keys", {"scopes": ["live:read", "live:write"], "name": "k"})
    key = {"X-API-Key": r.json()["key"]}
    r = stack.client.post(TRANSCRIPTS, json=SEED, headers=key)
    assert "api key" in problem_of(r, 403, "insufficient_scope")["detail"]
    # Refused for the credential, whatever the body.
    for body in ({}, {"transcripts": "x"}):
        r = stack.client.post(TRANSCRIPTS, json=body, headers=key)
        problem_of(r, 403, "insufficient_scope")

    settings = load_settings(stack.env)
    service = {
        "X-Service-Key": dev_service_key(settings),
        "X-On-Behalf-Of": f"{u.tenant}/{u.user_id}",
    }
    r = stack.client.post(TRANSCRIPTS, json=SEED, headers=service)
    assert r.status_code == 201, r.text
    tid, position = r.json()["transcript_id"], r.headers["X-Event-Position"]
    assert read(u, tid, position)["entry_count"] == 2
    # API keys may read.
    r = stack.client.get(TRANSCRIPTS, headers={**key, "X-Min-Position": position})
    assert r.status_code == 200 and [t["transcript_id"] for t in r.json()["items"]] == [tid]
    problem_of(stack.client.post(TRANSCRIPTS, json=SEED), 401, "unauthenticated")
    reader = stack.user(scope="live:read")
    problem_of(reader.post(TRANSCRIPTS, SEED), 403, "insufficient_scope")


def test_session_link_idempotency_and_bola(stack: Stack) -> None:
    u, other = stack.user(), stack.user()
    sid = u.start()["session_id"]
    ended = u.post("/api/live/session/end", {"session_id": sid}).json()
    stored = store(u, {**SEED, "session_id": sid})
    got = read(u, stored["transcript_id"], stored["position"])
    assert got["session_id"] == sid and got["end_reason"] == ended["end_reason"] == "client"
    for foreign in (sid, "not-a-session", "00000000-0000-0000-0000-000000000000"):
        problem_of(other.post(TRANSCRIPTS, {**SEED, "session_id": foreign}), 404, "not_found")

    key = {"Idempotency-Key": "transcript-1"}
    first = u.post(TRANSCRIPTS, SEED, **key)
    again = u.post(TRANSCRIPTS, SEED, **key)
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    assert first.headers["X-Event-Position"] == again.headers["X-Event-Position"]
    problem_of(u.post(TRANSCRIPTS, payload(T0), **key), 409, "conflict")

    # Another user's transcript does not exist for them, by id or in lists.
    position = first.headers["X-Event-Position"]
    r = other.get(f"{TRANSCRIPTS}/{stored['transcript_id']}", headers={"X-Min-Position": position})
    problem_of(r, 404, "not_found")
    problem_of(other.get(f"{TRANSCRIPTS}/not-an-id"), 404, "not_found")
    assert other.get(TRANSCRIPTS, headers={"X-Min-Position": position}).json()["items"] == []
    assert other.get(TRANSCRIPTS, params={"session_id": sid}).json()["items"] == []


def test_listing_order_filters_and_cursors(stack: Stack) -> None:
    u, other = stack.user(), stack.user()
    sid = u.start()["session_id"]
    u.post("/api/live/session/end", {"session_id": sid})
    days = [T0 + timedelta(days=d) for d in (3, 1, 4, 2, 5)]
    stored = [store(u, payload(day)) for day in days]
    linked = store(u, {**payload(T0 + timedelta(days=2, hours=1)), "session_id": sid})
    position = linked["position"]
    by_day = dict(zip(days, (s["transcript_id"] for s in stored), strict=True))
    newest_first = [by_day[d] for d in sorted(days, reverse=True)]
    everything = [*newest_first[:3], linked["transcript_id"], *newest_first[3:]]

    r = u.get(TRANSCRIPTS, headers={"X-Min-Position": position})
    assert r.status_code == 200, r.text
    page = r.json()
    assert [t["transcript_id"] for t in page["items"]] == everything
    assert page["next_cursor"] is None and page["as_of"] >= int(position)
    item = page["items"][0]
    assert set(item) == {
        "transcript_id", "session_id", "session_started_at", "session_ended_at", "created_at",
        "status", "end_reason", "entry_count",
    }
    assert pages(u, position, 2) == everything
    assert pages(u, position, 1, since=stamp(days[1] + timedelta(days=1))) == everything[:-1]
    assert pages(u, position, 2, until=stamp(T0 + timedelta(days=2))) == everything[-2:]
    assert pages(
        u, position, 1, since=stamp(T0 + timedelta(days=2)), until=stamp(T0 + timedelta(days=3))
    ) == [by_day[days[0]], linked["transcript_id"], by_day[days[3]]]
    assert pages(u, position, 5, session_id=sid) == [linked["transcript_id"]]

    r = u.get(TRANSCRIPTS, params={"limit": 2}, headers={"X-Min-Position": position})
    cursor = r.json()["next_cursor"]
    assert cursor
    tampered = ("A" if cursor[0] != "A" else "B") + cursor[1:]
    for bad in (tampered, cursor[:-2], "not-a-cursor", cursor + "x"):
        problem_of(u.get(TRANSCRIPTS, params={"cursor": bad}), 400, "invalid_request")
    # A cursor is bound to the user it was issued to.
    problem_of(other.get(TRANSCRIPTS, params={"cursor": cursor}), 400, "invalid_request")
    for params in ({"limit": 0}, {"limit": 101}, {"since": "yesterday"},
                   {"since": "2026-01-01T00:00:00"}, {"since": "1700000000"},
                   {"until": "2026-01-01"}, {"until": "0001-01-01T00:00:00+01:00"}):
        problem_of(u.get(TRANSCRIPTS, params=params), 400, "invalid_request")


def test_session_filter_takes_any_form_of_an_id_and_junk_matches_nothing(stack: Stack) -> None:
    u = stack.user()
    sid = u.start()["session_id"]
    u.post("/api/live/session/end", {"session_id": sid})
    linked = store(u, {**payload(T0), "session_id": sid})
    assert pages(u, linked["position"], 5, session_id=sid.upper()) == [linked["transcript_id"]]
    for junk in ("\x00", "not-a-session", "' OR 1=1 --", "00000000-0000-0000-0000-000000000000"):
        r = caught_up(u, TRANSCRIPTS, linked["position"], params={"session_id": junk})
        assert r.status_code == 200, r.text
        assert r.json()["items"] == [] and r.json()["next_cursor"] is None


def test_entry_timestamps_with_long_fractions_are_rfc3339(stack: Stack) -> None:
    u = stack.user()
    body = payload(T0, 1)
    body["transcripts"][0]["timestamp"] = "2026-01-01T00:00:00.1234567891Z"
    stored = store(u, body)
    got = read(u, stored["transcript_id"], stored["position"])
    assert got["transcripts"][0]["timestamp"] == "2026-01-01T00:00:00.123456Z"


def test_paging_250_while_new_transcripts_arrive(stack: Stack) -> None:
    u = stack.user()
    originals = [store(u, payload(T0 + timedelta(minutes=i), 1)) for i in range(250)]
    position = max(int(s["position"]) for s in originals)
    stop = threading.Event()
    written: list[str] = []

    def writer() -> None:
        with httpx.Client(base_url=stack.url, timeout=30) as client:
            i = 0
            while not stop.is_set():
                started = T0 + timedelta(days=30, minutes=i)
                r = client.post(TRANSCRIPTS, json=payload(started, 1), headers=u.headers)
                assert r.status_code == 201, r.text
                written.append(r.json()["transcript_id"])
                i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen = pages(u, str(position), 9)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert written  # new transcripts really were arriving
    assert len(seen) == len(set(seen))  # no duplicates
    old = [t for t in seen if t not in set(written)]
    assert old == [s["transcript_id"] for s in reversed(originals)]  # no gaps, in order


def test_a_5000_entry_transcript_round_trips(stack: Stack) -> None:
    u = stack.user()
    body = payload(T0, 5_000)
    for i, entry in enumerate(body["transcripts"]):
        entry["text"] = f"entry {i}: " + "wörds " * 30
    stored = store(u, body)
    assert stored["entry_count"] == 5_000
    got = read(u, stored["transcript_id"], stored["position"])
    assert got["entry_count"] == 5_000
    assert [e["text"] for e in got["transcripts"]] == [e["text"] for e in body["transcripts"]]
    assert [e["timestamp"] for e in got["transcripts"]] == [
        e["timestamp"] for e in body["transcripts"]
    ]


def test_a_body_over_the_limit_answers_413(stack: Stack) -> None:
    u = stack.user()
    body = payload(T0, 300)
    for entry in body["transcripts"]:
        entry["text"] = "x" * 10_000  # about 3 MB in all, over the 2 MiB default
    problem_of(u.post(TRANSCRIPTS, body), 413, "payload_too_large")


def test_conversations_that_started_together_list_the_last_stored_first(stack: Stack) -> None:
    """The seed's payload posted several times: the same start, so the newest stored comes
    first, and pages of one keep that order with no duplicate and no gap."""
    u = stack.user()
    stored = []
    for _ in range(5):
        r = u.post(TRANSCRIPTS, SEED)
        assert r.status_code == 201, r.text
        stored.append(r.json()["transcript_id"])
    position = r.headers["X-Event-Position"]
    listed = u.get(TRANSCRIPTS, headers={"X-Min-Position": position}).json()["items"]
    assert [t["transcript_id"] for t in listed] == stored[::-1]
    paged, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = u.get(TRANSCRIPTS, params=params).json()
        paged += [t["transcript_id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert paged == stored[::-1]
