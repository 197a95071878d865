"""Request ids, security headers and request metrics, for every answer including errors."""

from __future__ import annotations

import itertools
import os
import re
import secrets
import time
from functools import lru_cache
from typing import Any

from litestar.types import ASGIApp, HTTPResponseStartEvent, Message, Receive, Scope, Send
from prometheus_client import Counter, Histogram

from adapters.logs import request_id as request_id_var

REQUESTS = Counter(
    "xentree_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
LATENCY = Histogram(
    "xentree_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

# Answers are per-user JSON: never cached by shared caches, never sniffed or framed.
# (An endpoint that sets its own Cache-Control, like the public JWKS, keeps it.)
SECURITY_HEADERS = (
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)

# A client's id is echoed when it is visible ASCII (inner spaces allowed), 1-200 characters:
# anything a tracing header carries, nothing that could split a header or a log line.
_CLIENT_ID = re.compile(r"^[!-~](?:[ -~]{0,198}[!-~])?$")
_STATE_KEY = "request_id"
# New request ids: a random prefix per process and a counter. Unique without a call to
# the OS's random source on every request (os.urandom lets go of the GIL, and getting it
# back behind the command threads could stall the event loop for a switch interval).
_id_prefix = secrets.token_hex(6)
_id_counter = itertools.count(1)


def _new_id_prefix() -> None:
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = secrets.token_hex(6), itertools.count(1)


os.register_at_fork(after_in_child=_new_id_prefix)


def new_request_id() -> str:
    """24 hex characters, unique per process (a forked child draws its own prefix)."""
    return f"{_id_prefix}{next(_id_counter):012x}"


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # type: ignore[comparison-overlap]
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]
        token = request_id_var.set(request_id_of(scope))

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_counted)
        finally:
            request_id_var.reset(token)
            _count(scope, status[0], time.perf_counter() - started)

    return middleware


def _count(scope: Scope, status: int, seconds: float) -> None:
    counter, timer = _children(str(scope.get("method", "")), _route(scope), status)
    counter.inc()
    timer.observe(seconds)


@lru_cache(maxsize=4096)
def _children(method: str, route: str, status: int) -> tuple[Any, Any]:
    """The metrics' children for these labels, looked up once (`labels()` validates and
    locks on every call, which was a few per cent of a quota read's CPU)."""
    return REQUESTS.labels(method, route, str(status)), LATENCY.labels(method, route)


def request_id_of(scope: Scope) -> str:
    """The request's id: the client's `X-Request-Id` when usable, else a new one. Kept in
    the scope's state, so the logs and the answer name the same id."""
    state: dict[str, Any] = scope.setdefault("state", {})
    request_id = state.get(_STATE_KEY)
    if not isinstance(request_id, str):
        sent = _header(scope, b"x-request-id")
        request_id = sent if sent and _CLIENT_ID.match(sent) else new_request_id()
        state[_STATE_KEY] = request_id
    return request_id


def stamp_response(message: HTTPResponseStartEvent, scope: Scope) -> None:
    """The request id and the security headers on an answer's start message (the app's
    before-send hook calls it for every answer, including the router's own 404 and 405,
    which no middleware sees: middleware wraps matched routes only)."""
    headers = list(message.get("headers", ()))
    present = {bytes(name).lower() for name, _ in headers}
    if b"x-request-id" not in present:
        headers.append((b"x-request-id", request_id_of(scope).encode()))
    headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
    message["headers"] = headers


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            try:
                return str(value.decode("ascii"))
            except UnicodeDecodeError:
                return None
    return None


def _route(scope: Scope) -> str:
    """The matched route's path template, as `/api/live/transcripts/{id}` (bounded label
    values: never the raw path)."""
    template = scope.get("path_template")
    return template if isinstance(template, str) and template else "unmatched"
