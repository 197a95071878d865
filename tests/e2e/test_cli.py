"""The operator CLI: results on the last line of stdout, clear errors, non-zero exits."""

from __future__ import annotations

import msgspec

from tests.e2e.conftest import Stack


def test_dev_token_authenticates_with_its_scopes(stack: Stack) -> None:
    done = stack.cli("dev-token", "--tenant", "acme", "--user", "cli-u1", "--scope", "live:read")
    token = done.stdout.strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {token}"}
    assert stack.client.get("/api/live/quota", headers=headers).status_code == 200
    r = stack.client.post(
        "/api/live/session/start", json={"session_type": "voice"}, headers=headers
    )
    assert r.status_code == 403


def test_plan_assign_prints_the_plan_and_changes_the_quota(stack: Stack) -> None:
    u = stack.user()
    done = stack.cli(
        "plan", "assign", "--tenant", u.tenant, "--user", u.user_id, "--plan", "pro"
    )
    result = msgspec.json.decode(done.stdout.strip().splitlines()[-1])
    assert result["plan"] == "pro" and result["limit_seconds"] == 36_000
    # The command returns once the API's reads show the plan: no waiting by the caller.
    quota = u.get("/api/live/quota").json()
    assert (quota["plan"], quota["limit_seconds"], quota["remaining_seconds"]) == (
        "pro", 36_000, 36_000)
    assert u.get("/api/live/profile").json()["plan"] == "pro"
    started = u.start()
    assert started["remaining_seconds"] == 36_000
    # And again for a change of plan (the quota row exists now).
    stack.cli("plan", "assign", "--tenant", u.tenant, "--user", u.user_id, "--plan", "custom",
              "--seconds", "1234")
    assert u.get("/api/live/quota").json()["limit_seconds"] == 1234


def test_errors_exit_non_zero_with_a_message(stack: Stack) -> None:
    done = stack.cli(
        "plan", "assign", "--tenant", "t", "--user", "u", "--plan", "custom", check=False
    )
    assert done.returncode != 0 and "seconds" in done.stderr
    done = stack.cli(
        "api-key", "create", "--tenant", "t", "--user", "u", "--scope", "integration:manage",
        check=False,
    )
    assert done.returncode != 0 and "error" in done.stderr
    done = stack.cli("plan", "assign", "--tenant", "t", check=False)
    assert done.returncode != 0
