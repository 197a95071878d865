"""Plan assignment bounds: a value outside them is refused before it becomes an event."""

from __future__ import annotations

import pytest

from domain.account import Account
from domain.errors import InvalidValue
from domain.plans import MAX_PLAN_SECONDS


def _account() -> Account:
    return Account(tenant_id="t1", user_id="u1")


@pytest.mark.parametrize(
    ("limit", "max_session", "field"),
    [
        (-1, 3_600, "seconds"),
        (MAX_PLAN_SECONDS + 1, 3_600, "seconds"),
        (10**23, 3_600, "seconds"),
        (600, 0, "max_session_seconds"),
        (600, MAX_PLAN_SECONDS + 1, "max_session_seconds"),
    ],
)
def test_out_of_range_plans_are_refused(limit: int, max_session: int, field: str) -> None:
    account = _account()
    with pytest.raises(InvalidValue) as refused:
        account.assign_plan("custom", limit, max_session)
    assert refused.value.field == field
    assert account.plan is None and len(account.pending_events) == 1  # only Registered


def test_the_bounds_themselves_are_allowed() -> None:
    account = _account()
    account.assign_plan("custom", 0, 1)
    account.assign_plan("enterprise", MAX_PLAN_SECONDS, MAX_PLAN_SECONDS)
    assert (account.limit_seconds, account.max_session_seconds) == (
        MAX_PLAN_SECONDS,
        MAX_PLAN_SECONDS,
    )
