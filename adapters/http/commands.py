"""Shared plumbing of command endpoints: idempotency keys, answers, read-your-writes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread
from litestar import Request, Response

from adapters.http.problems import BadRequest
from adapters.http.services import Services
from application.idempotency import IdempotencyRequest, fingerprint
from application.principal import Principal
from application.results import Answer

T = TypeVar("T")

MAX_IDEMPOTENCY_KEY = 255


def services_of(request: Request[Any, Any, Any]) -> Services:
    services: Services = request.app.state.services
    return services


async def in_thread(fn: Callable[[], T]) -> T:
    """Run blocking work (the event store, psycopg) off the event loop."""
    return await anyio.to_thread.run_sync(fn)


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
        owner=f"{principal.tenant_id}/{principal.user_id}",
        key=key,
        fingerprint=fingerprint(request.method, request.url.path, body),
    )


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


def min_position(request: Request[Any, Any, Any]) -> int | None:
    raw = request.headers.get("x-min-position")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequest("X-Min-Position must be a non-negative integer")
    return int(raw)
