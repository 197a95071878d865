"""The caller's quota, from the quota read model."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from litestar import Controller, Request, get

from adapters.auth.scopes import LIVE_READ
from adapters.http.auth import guarded, principal_of
from adapters.http.commands import min_position, services_of
from adapters.http.schemas import READ_PROBLEMS
from domain.periods import period_bounds


class ActiveSession(msgspec.Struct):
    session_id: str
    session_type: str
    started_at: datetime


class QuotaView(msgspec.Struct):
    plan: str
    period_start: datetime
    period_end: datetime
    limit_seconds: int
    used_seconds: int
    remaining_seconds: int
    max_session_seconds: int
    active_sessions: list[ActiveSession]
    as_of: int


class QuotaController(Controller):
    path = "/api/live/quota"
    tags = ["quota"]

    @get("/", operation_id="getQuota", responses=READ_PROBLEMS, summary="The caller's quota",
         **guarded(LIVE_READ))
    async def quota(self, request: Request[Any, Any, Any]) -> QuotaView:
        services = services_of(request)
        principal = principal_of(request)
        wanted = min_position(request)

        start, end = period_bounds(services.now())
        mark, row = await services.quota(
            principal.tenant_id, principal.user_id, start, wanted, _with_sessions
        )
        if row is None or row["period_start"] != start:
            # No usage yet this period: the whole entitlement of the plan the user is on,
            # the one their latest period ended with (the default plan for a new user).
            settings = services.settings
            plan, limit, max_session = (
                (row["plan"], row["limit_seconds"], row["max_session_seconds"])
                if row is not None
                else (
                    settings.default_plan,
                    settings.plan_seconds(settings.default_plan),
                    settings.plans.max_session_seconds,
                )
            )
            return QuotaView(
                plan=plan,
                period_start=start,
                period_end=end,
                limit_seconds=limit,
                used_seconds=0,
                remaining_seconds=limit,
                max_session_seconds=max_session,
                active_sessions=[],
                as_of=mark,
            )
        return QuotaView(
            plan=row["plan"],
            period_start=row["period_start"],
            period_end=row["period_end"],
            limit_seconds=row["limit_seconds"],
            used_seconds=row["used_seconds"],
            remaining_seconds=max(0, row["limit_seconds"] - row["used_seconds"]),
            max_session_seconds=row["max_session_seconds"],
            active_sessions=row["sessions"],
            as_of=mark,
        )


def _with_sessions(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its active sessions decoded once, as it is fetched (a cached row then
    answers every read without decoding its JSON again)."""
    return {**row, "sessions": [
        msgspec.convert(a, ActiveSession, strict=False) for a in row["active"]
    ]}
