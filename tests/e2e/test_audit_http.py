"""The audit API against the running stack (whose processes connect as the app role)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from tests.e2e.conftest import Stack, User

PLATFORM = "platform-audit"  # XENTREE_AUDIT_PLATFORM_TENANT of the e2e stack


def auditor(stack: Stack, tenant: str, scope: str = "audit:read") -> dict[str, str]:
    token = stack.issuer.mint(tenant, "auditor", scope, 3600)
    return {"Authorization": f"Bearer {token}"}


def session(u: User) -> str:
    sid: str = u.start()["session_id"]
    r = u.post("/api/live/session/end", {"session_id": sid, "reason": "client"})
    assert r.status_code == 200, r.text
    return sid


def all_pages(stack: Stack, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        r = stack.client.get(
            "/api/audit/events", params={**params, "after": after, "limit": 2}, headers=headers
        )
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["events"]) <= 2
        events += page["events"]
        assert page["next_after"] >= after
        after = page["next_after"]
        if not page["more"]:
            return events


def test_tenant_auditor_pages_through_own_tenant_only(stack: Stack) -> None:
    u, other = stack.user(), stack.user()
    sid = session(u)
    session(other)
    mine = all_pages(stack, auditor(stack, u.tenant))
    assert mine and {e["tenantid"] for e in mine} == {u.tenant}
    assert [e["position"] for e in mine] == sorted({e["position"] for e in mine})
    types = {e["type"] for e in mine if e["subject"] == sid}
    assert {"xentree.live.LiveSession.Started", "xentree.live.LiveSession.Ended"} <= types

    # Another tenant's history is not there for this auditor: 404, never 403, and the same
    # answer for a tenant that exists as for one that does not.
    for tenant in (other.tenant, "t-no-such-tenant"):
        r = stack.client.get(
            "/api/audit/events", params={"tenant": tenant}, headers=auditor(stack, u.tenant)
        )
        assert r.status_code == 404 and r.json()["code"] == "not_found", r.text
        r = stack.client.get("/api/audit/replay", params={
            "tenant": tenant, "user": other.user_id, "until": "2030-01-01T00:00:00Z"},
            headers=auditor(stack, u.tenant))
        assert r.status_code == 404 and r.json()["code"] == "not_found", r.text
    r = stack.client.get("/api/audit/events", headers=u.headers)  # live scopes only
    assert r.status_code == 403 and r.json()["code"] == "insufficient_scope"
    assert stack.client.get("/api/audit/events").status_code == 401


def test_platform_auditor_reads_every_tenant(stack: Stack) -> None:
    u, other = stack.user(), stack.user()
    session(u)
    session(other)
    platform = auditor(stack, PLATFORM)
    both = {e["tenantid"] for e in all_pages(stack, platform)}
    assert {u.tenant, other.tenant} <= both
    only = all_pages(stack, platform, tenant=other.tenant, user=other.user_id)
    assert only and {(e["tenantid"], e["userid"]) for e in only} == {(other.tenant, other.user_id)}


def test_a_platform_auditor_key_reads_every_tenant(stack: Stack) -> None:
    """An auditors' tool authenticates with an API key holding audit:read."""
    u, other = stack.user(), stack.user()
    session(u)
    session(other)
    created = stack.cli(
        "api-key", "create", "--tenant", PLATFORM, "--user", "audit-tool", "--scope", "audit:read"
    )
    key = {"X-API-Key": created.stdout.strip().splitlines()[-1]}
    first = stack.client.get("/api/audit/events", params={"limit": 1000}, headers=key)
    assert first.status_code == 200, first.text
    latest = all_pages(stack, key, tenant=other.tenant)
    assert latest and {e["tenantid"] for e in latest} == {other.tenant}
    # The key reads history only: not the live API.
    assert stack.client.get("/api/live/quota", headers=key).status_code == 403


def test_replay_answers_a_users_sessions_and_billed_seconds(stack: Stack) -> None:
    u = stack.user()
    before = datetime.now(UTC)
    sid = session(u)
    r = stack.client.get(
        "/api/audit/replay",
        params={"user": u.user_id, "until": datetime.now(UTC).isoformat()},
        headers=auditor(stack, u.tenant),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [s["id"] for s in body["sessions"]] == [sid]
    assert body["sessions"][0]["end_reason"] == "client"
    assert body["billed_seconds"] == body["quota"][0]["used_seconds"]
    r = stack.client.get(
        "/api/audit/replay",
        params={"user": u.user_id, "until": before.isoformat()},
        headers=auditor(stack, u.tenant),
    )
    assert r.status_code == 200 and r.json()["sessions"] == []


def test_event_schemas_are_served(stack: Stack) -> None:
    r = stack.client.get("/api/events/schema")
    assert r.status_code == 200
    schemas = r.json()
    assert "xentree.live.LiveSession.Started" in schemas
    r = stack.client.get("/api/events/schema/xentree.live.UsageLedger.UsageBilled")
    assert r.status_code == 200
    schema = r.json()
    assert schema["properties"]["type"] == {"const": "xentree.live.UsageLedger.UsageBilled"}
    assert set(schema["$defs"]["UsageLedgerUsageBilled"]["properties"]) >= {"seconds"}
    assert stack.client.get("/api/events/schema/xentree.live.Nope.Gone").status_code == 404


def test_event_schemas_are_served_at_schema_events(stack: Stack) -> None:
    """Beside the OpenAPI document (/schema), without credentials: the published files."""
    published = Path(__file__).resolve().parents[2] / "docs" / "events"
    for path in ("/schema/events/", "/schema/events"):
        r = stack.client.get(path)
        assert r.status_code == 200, (path, r.text)
        assert r.headers["content-type"].startswith("application/json")
        assert set(r.json()) == {p.name.removesuffix(".json") for p in published.glob("*.json")}
    name = "xentree.live.LiveSession.Billed"
    for path in (f"/schema/events/{name}", f"/schema/events/{name}.json"):
        r = stack.client.get(path)
        assert r.status_code == 200, (path, r.text)
        assert r.json() == msgspec.json.decode((published / f"{name}.json").read_bytes())
    r = stack.client.get("/schema/events/xentree.live.Nope.Gone")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    paths = stack.client.get("/schema/openapi.json").json()["paths"]
    assert {"/schema/events", "/schema/events/{event_type}"} <= set(paths)


def test_audit_times_are_instants_in_order(stack: Stack) -> None:
    """A time without an offset names no instant: 400, never a 500."""
    headers = auditor(stack, stack.user().tenant)
    for params in (
        {"since": "2026-11-24T12:00:00"},
        {"until": "2026-11-24T12:00:00"},
        {"since": "2026-11-25T00:00:00Z", "until": "2026-11-24T00:00:00Z"},
    ):
        r = stack.client.get("/api/audit/events", params=params, headers=headers)
        assert r.status_code == 400, (params, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    r = stack.client.get(
        "/api/audit/replay", params={"user": "u", "until": "2026-11-24T12:00:00"},
        headers=headers,
    )
    assert r.status_code == 400, r.text


def test_replay_of_a_user_without_history_is_404(stack: Stack) -> None:
    u = stack.user()
    session(u)
    until = datetime.now(UTC).isoformat()
    r = stack.client.get(
        "/api/audit/replay", params={"user": "nobody", "until": until},
        headers=auditor(stack, u.tenant),
    )
    assert r.status_code == 404, r.text
    assert r.json()["code"] == "not_found"
    platform = auditor(stack, PLATFORM)
    r = stack.client.get(
        "/api/audit/replay",
        params={"user": u.user_id, "until": until, "tenant": "no-such-tenant"},
        headers=platform,
    )
    assert r.status_code == 404, r.text
    r = stack.client.get(
        "/api/audit/replay",
        params={"user": u.user_id, "until": until, "tenant": u.tenant},
        headers=platform,
    )
    assert r.status_code == 200 and r.json()["billed_seconds"] >= 0
