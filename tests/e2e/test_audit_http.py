"""The audit API against the running stack (whose processes connect as the app role)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

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

    r = stack.client.get(
        "/api/audit/events", params={"tenant": other.tenant}, headers=auditor(stack, u.tenant)
    )
    assert r.status_code == 403
    r = stack.client.get("/api/audit/events", headers=u.headers)  # live scopes only
    assert r.status_code == 403
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
