"""Session commands and session reads."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import Parameter

from adapters.auth.scopes import LIVE_READ, LIVE_WRITE
from adapters.http.auth import guarded, principal_of
from adapters.http.commands import (
    idempotency,
    in_command_thread,
    min_position,
    respond,
    services_of,
)
from adapters.http.integration import end_if_token_revoked
from adapters.http.problems import BadRequest
from adapters.http.schemas import COMMAND_PROBLEMS, READ_PROBLEMS
from adapters.readmodels import afetch_all, afetch_one, session_query, sessions_query
from application.results import HeartbeatAccepted, SessionEnded, SessionStarted
from domain.errors import NotFound


class StartRequest(msgspec.Struct, forbid_unknown_fields=True):
    session_type: Literal["voice", "avatar"]


class SessionRef(msgspec.Struct, forbid_unknown_fields=True):
    session_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class EndRequest(msgspec.Struct, forbid_unknown_fields=True):
    session_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    reason: Literal["client", "client_disconnected", "upstream_lost"] = "client"


class SessionView(msgspec.Struct):
    session_id: str
    session_type: str
    status: Literal["active", "ended"]
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    session_seconds: int
    billed_seconds: int
    last_billed_at: datetime | None


class SessionPage(msgspec.Struct):
    items: list[SessionView]
    next_cursor: str | None
    as_of: int


class Cursor(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    started_at: datetime
    session_id: str


def _view(row: dict[str, Any]) -> SessionView:
    return SessionView(
        session_id=str(row["session_id"]),
        session_type=row["session_type"],
        status="active" if row["ended_at"] is None else "ended",
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        end_reason=row["end_reason"],
        session_seconds=row["session_seconds"],
        billed_seconds=row["session_seconds"],
        last_billed_at=row["last_billed_at"],
    )


def _encode_cursor(row: dict[str, Any]) -> str:
    raw = msgspec.json.encode(Cursor(row["started_at"], str(row["session_id"])))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(text: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        cursor = msgspec.json.decode(raw, type=Cursor)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise BadRequest("cursor is not one this API issued") from None
    return cursor.started_at, cursor.session_id


class SessionController(Controller):
    path = "/api/live"
    tags = ["sessions"]

    @post(
        "/session/start",
        operation_id="startSession",
        status_code=201,
        responses=COMMAND_PROBLEMS,
        summary="Start a live session",
        **guarded(LIVE_WRITE),
    )
    async def start(
        self, request: Request[Any, Any, Any], data: StartRequest
    ) -> Response[SessionStarted]:
        services = services_of(request)
        principal = principal_of(request)
        idem = await idempotency(request, principal)
        answer = await in_command_thread(
            services,
            lambda: services.live.start_session(
                principal, data.session_type, services.now, idem
            )
        )
        if principal.credential == "integration":
            await in_command_thread(
                services, lambda: end_if_token_revoked(services, principal, answer)
            )
        return respond(answer)

    @post(
        "/session/heartbeat",
        operation_id="heartbeatSession",
        status_code=200,
        responses=COMMAND_PROBLEMS,
        summary="Bill the session up to now and keep it alive",
        **guarded(LIVE_WRITE),
    )
    async def heartbeat(
        self, request: Request[Any, Any, Any], data: SessionRef
    ) -> Response[HeartbeatAccepted]:
        services = services_of(request)
        principal = principal_of(request)
        idem = await idempotency(request, principal)
        answer = await in_command_thread(
            services,
            lambda: services.live.heartbeat(principal, data.session_id, services.now, idem)
        )
        return respond(answer)

    @post(
        "/session/end",
        operation_id="endSession",
        status_code=200,
        responses=COMMAND_PROBLEMS,
        summary="End the session (idempotent)",
        **guarded(LIVE_WRITE),
    )
    async def end(
        self, request: Request[Any, Any, Any], data: EndRequest
    ) -> Response[SessionEnded]:
        services = services_of(request)
        principal = principal_of(request)
        idem = await idempotency(request, principal)
        answer = await in_command_thread(
            services,
            lambda: services.live.end_session(
                principal, data.session_id, data.reason, services.now, idem
            )
        )
        return respond(answer)

    @get(
        "/sessions",
        operation_id="listSessions",
        responses=READ_PROBLEMS,
        summary="The caller's sessions, newest first",
        **guarded(LIVE_READ),
    )
    async def list_sessions(
        self,
        request: Request[Any, Any, Any],
        limit: Annotated[int, Parameter(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, Parameter(max_length=200)] = None,
    ) -> SessionPage:
        services = services_of(request)
        principal = principal_of(request)
        before = _decode_cursor(cursor) if cursor else None
        mark = await services.read_mark("sessions", min_position(request))
        async with services.aread() as conn:
            rows = await afetch_all(
                conn, sessions_query(principal.tenant_id, principal.user_id, limit + 1, before)
            )
        more = len(rows) > limit
        rows = rows[:limit]
        return SessionPage(
            items=[_view(r) for r in rows],
            next_cursor=_encode_cursor(rows[-1]) if more else None,
            as_of=mark,
        )

    @get(
        "/sessions/{session_id:str}",
        operation_id="getSession",
        responses=READ_PROBLEMS,
        summary="One of the caller's sessions",
        **guarded(LIVE_READ),
    )
    async def get_session(self, request: Request[Any, Any, Any], session_id: str) -> SessionView:
        services = services_of(request)
        principal = principal_of(request)
        await services.read_mark("sessions", min_position(request))
        async with services.aread() as conn:
            row = await afetch_one(
                conn, session_query(principal.tenant_id, principal.user_id, session_id)
            )
        if row is None:
            raise NotFound("session")
        return _view(row)
