"""The operator CLI refuses what the API would refuse: a clear message, a non-zero exit,
nothing recorded, and never an event the read models cannot hold."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Stack

PLAN = ("plan", "assign")


def _refused(stack: Stack, *args: str, says: str) -> None:
    done = stack.cli(*args, check=False)
    assert done.returncode != 0, done.stdout
    assert done.stdout.strip() == ""
    assert says in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (("--tenant", "", "--user", "u1"), "--tenant"),
        (("--tenant", "a b", "--user", "u1"), "--tenant"),
        (("--tenant", "t1", "--user", "u\x01"), "--user"),
    ],
)
def test_plan_assign_refuses_ids_no_credential_could_carry(
    stack: Stack, extra: tuple[str, ...], says: str
) -> None:
    _refused(stack, *PLAN, *extra, "--plan", "pro", says=says)


def test_plan_assign_refuses_out_of_range_seconds_and_changes_nothing(stack: Stack) -> None:
    u = stack.user()
    owner = ("--tenant", u.tenant, "--user", u.user_id)
    _refused(stack, *PLAN, *owner, "--plan", "custom", "--seconds", "9" * 23, says="seconds")
    _refused(stack, *PLAN, *owner, "--plan", "pro", "--max-session-seconds", "0",
             says="--max-session-seconds")
    _refused(stack, *PLAN, *owner, "--plan", "pro", "--max-session-seconds", "9" * 12,
             says="max_session_seconds")
    # Nothing was recorded, and the projections still move (a huge entitlement used to
    # become an event no read model could store, stalling every projection behind it).
    started = u.post("/api/live/session/start", {"session_type": "voice"})
    assert started.status_code == 201, started.text
    assert started.json()["remaining_seconds"] == 600
    position = started.headers["X-Event-Position"]
    quota = u.get("/api/live/quota", headers={"X-Min-Position": position})
    assert quota.status_code == 200, quota.text
    assert (quota.json()["plan"], quota.json()["limit_seconds"]) == ("free", 600)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (("--tenant", "", "--user", "u1"), "--tenant"),
        (("--tenant", "t1", "--user", "u1", "--scope", ""), "scope"),
        (("--tenant", "t1", "--user", "u1", "--scope", "integration:manage"), "scope"),
        (("--tenant", "t1", "--user", "u1", "--name", "x\x07"), "name"),
        (("--tenant", "t1", "--user", "u1", "--name", "n" * 101), "name"),
    ],
)
def test_api_key_create_refuses_what_the_api_refuses(
    stack: Stack, extra: tuple[str, ...], says: str
) -> None:
    _refused(stack, "api-key", "create", *extra, says=says)


def test_dev_token_refuses_a_malformed_scope(stack: Stack) -> None:
    _refused(stack, "dev-token", "--tenant", "t1", "--user", "u1", "--scope",
             "live:read  live:write", says="scope")
