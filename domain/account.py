"""A user's account: plan assignment and (later) personalisation."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain import ids
from domain.errors import InvalidValue
from domain.plans import MAX_PLAN_SECONDS, PLAN_NAMES


class Account(Aggregate):
    @staticmethod
    def create_id(tenant_id: str, user_id: str) -> UUID:
        return ids.account_id(tenant_id, user_id)

    @event("Registered")
    def __init__(self, *, tenant_id: str, user_id: str) -> None:
        self.tenant_id = tenant_id
        self.user_id = user_id
        self.plan: str | None = None
        self.limit_seconds: int | None = None
        self.max_session_seconds: int | None = None
        self.nickname: str | None = None

    def assign_plan(self, plan: str, limit_seconds: int, max_session_seconds: int) -> None:
        if plan not in PLAN_NAMES:
            raise InvalidValue("plan", f"unknown plan {plan!r}")
        if not 0 <= limit_seconds <= MAX_PLAN_SECONDS:
            raise InvalidValue("seconds", f"the entitlement must be 0-{MAX_PLAN_SECONDS} seconds")
        if not 0 < max_session_seconds <= MAX_PLAN_SECONDS:
            raise InvalidValue(
                "max_session_seconds", f"must be 1-{MAX_PLAN_SECONDS} seconds"
            )
        self._plan_assigned(
            plan=plan, limit_seconds=limit_seconds, max_session_seconds=max_session_seconds
        )

    @event("PlanAssigned")
    def _plan_assigned(self, *, plan: str, limit_seconds: int, max_session_seconds: int) -> None:
        self.plan = plan
        self.limit_seconds = limit_seconds
        self.max_session_seconds = max_session_seconds

    def change_nickname(self, nickname: str) -> None:
        """Set the nickname (already normalised by `normalise_nickname`); the same one
        again records nothing."""
        if nickname != self.nickname:
            self._nickname_changed(nickname=nickname)

    @event("NicknameChanged")
    def _nickname_changed(self, *, nickname: str) -> None:
        self.nickname = nickname
