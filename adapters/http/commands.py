"""Shared plumbing of command endpoints: idempotency keys, answers, read-your-writes."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response
from litestar.types import HTTPResponseStartEvent, Scope

from adapters.http.auth import PRINCIPAL_STATE
from adapters.http.middleware import header_value
from adapters.http.problems import BadRequest
from adapters.http.services import ReadAfter, Services
from application.idempotency import IdempotencyRequest, fingerprint, owner_of
from application.principal import Principal
from application.results import Answer

T = TypeVar("T")

MAX_IDEMPOTENCY_KEY = 255


def services_of(request: Request[Any, Any, Any]) -> Services:
    services: Services = request.app.state.services
    return services


async def in_thread(fn: Callable[[], T], executor: Executor | None = None) -> T:
    """Run blocking work (the event store, psycopg) off the event loop, in the loop's
    executor (the app's lifespan sizes it) or the one given, with the request's context
    (its id, for logs). Plainer than anyio's thread hop, which cost a tenth of a
    heartbeat's CPU."""
    return await asyncio.get_running_loop().run_in_executor(
        executor, contextvars.copy_context().run, fn
    )


async def in_command_thread(services: Services, fn: Callable[[], T]) -> T:
    """Run a command on the event store in the command threads (README "Tuning"), or in
    the loop's executor before the services have started them."""
    if services.commands is None:
        return await in_thread(fn)
    return await services.commands.run(fn)


async def idempotency(
    request: Request[Any, Any, Any], principal: Principal
) -> IdempotencyRequest | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise BadRequest("Idempotency-Key must be 1-255 printable characters")
    body = await request.body()
    return IdempotencyRequest(
        owner=owner_of(principal.tenant_id, principal.user_id),
        key=key,
        fingerprint=fingerprint(request.method, request.url.path, canonical_json(body)),
    )


def canonical_json(body: bytes) -> bytes:
    """The same JSON however it was spaced or its keys ordered, so a client that encodes
    its retry anew is still retrying; a body that is not JSON stays as it is."""
    try:
        return msgspec.json.encode(msgspec.json.decode(body), order="sorted")
    except (msgspec.DecodeError, RecursionError):
        return body


def respond(answer: Answer) -> Response[Any]:
    headers = {}
    if answer.position is not None:
        headers["X-Event-Position"] = str(answer.position)
    return Response(
        content=answer.body,
        status_code=answer.status,
        media_type="application/json",
        headers=headers,
    )


def min_position(request: Request[Any, Any, Any]) -> ReadAfter | None:
    raw = header_value(request.scope, b"x-min-position")
    if raw is not None:
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
            raise BadRequest("X-Min-Position must be a non-negative integer")
        return ReadAfter(int(raw), strict=True)
    principal = request.scope.get("state", {}).get(PRINCIPAL_STATE)
    if isinstance(principal, Principal):
        remembered = services_of(request).writes.last(principal)
        if remembered is not None:
            return ReadAfter(remembered, strict=False)
    return None


def remember_writes(message: HTTPResponseStartEvent, scope: Scope) -> None:
    """On an answer's start message: a command's X-Event-Position becomes its caller's
    last write (reads carry none, and are most answers: they are not searched)."""
    if scope.get("method") in ("GET", "HEAD"):
        return
    principal = scope.get("state", {}).get(PRINCIPAL_STATE)
    if not isinstance(principal, Principal):
        return
    for name, value in message.get("headers", ()):
        if bytes(name).lower() == b"x-event-position":
            scope["app"].state.services.writes.note(principal, int(value))
            return
