"""The caller's profile: read from the profile projection; the nickname command answers
from the write side, so the new nickname shows at once."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, put
from litestar.exceptions import ValidationException

from adapters.auth.scopes import LIVE_READ, LIVE_WRITE
from adapters.http.auth import guarded, principal_of
from adapters.http.bodies import invalid_body
from adapters.http.commands import (
    idempotency,
    in_command_thread,
    in_thread,
    min_position,
    respond,
    services_of,
)
from adapters.http.schemas import NICKNAME_PROBLEMS, READ_PROBLEMS
from adapters.readmodels import profile_row
from application.results import Profile


class NicknameRequest(msgspec.Struct, forbid_unknown_fields=True):
    nickname: str


class ProfileView(msgspec.Struct):
    user_id: str
    tenant_id: str
    nickname: str | None
    plan: str
    as_of: int


class ProfileController(Controller):
    path = "/api/live/profile"
    tags = ["profile"]
    # A body of the wrong shape is 422 naming the field, like a nickname that breaks a rule.
    exception_handlers = {ValidationException: invalid_body}

    @get("/", operation_id="getProfile", responses=READ_PROBLEMS, summary="The caller's profile",
         **guarded(LIVE_READ))
    async def profile(self, request: Request[Any, Any, Any]) -> ProfileView:
        services = services_of(request)
        principal = principal_of(request)
        wanted = min_position(request)

        def read() -> ProfileView:
            mark = services.wait_for("profile", wanted)
            with services.read() as conn:
                row = profile_row(conn, principal.tenant_id, principal.user_id)
            default_plan = services.settings.default_plan
            return ProfileView(
                user_id=principal.user_id,
                tenant_id=principal.tenant_id,
                nickname=row["nickname"] if row else None,
                plan=(row["plan"] if row else None) or default_plan,
                as_of=mark,
            )

        return await in_thread(read)

    @put(
        "/nickname",
        operation_id="setNickname",
        status_code=200,
        responses=NICKNAME_PROBLEMS,
        summary="Change the caller's nickname (trimmed, NFC, 1-32 characters)",
        **guarded(LIVE_WRITE),
    )
    async def set_nickname(
        self, request: Request[Any, Any, Any], data: NicknameRequest
    ) -> Response[Profile]:
        services = services_of(request)
        principal = principal_of(request)
        idem = await idempotency(request, principal)
        answer = await in_command_thread(
            services,
            lambda: services.live.set_nickname(principal, data.nickname, idem)
        )
        return respond(answer)
