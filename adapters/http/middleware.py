"""Request ids, security headers and request metrics, for every answer including errors."""

from __future__ import annotations

import itertools
import os
import re
import secrets
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from litestar.types import (
    ASGIApp,
    HTTPResponseStartEvent,
    HTTPScope,
    Message,
    Receive,
    Scope,
    Send,
)
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from adapters.logs import request_id as request_id_var


class HttpMetrics:
    """HTTP requests answered (by method, route and status) and their latency (by method
    and route), counted in plain integers and turned into Prometheus families when
    scraped. Only the event loop's thread counts (every answer passes `serve_http`), so no
    lock is needed: prometheus_client's own counter and histogram take one per sample and
    cost a twelfth of a quota read's CPU. Label values are bounded: routes are templates,
    methods outside the standard ones are counted as "other"."""

    BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
    METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))

    def __init__(self) -> None:
        self._answers: dict[tuple[str, str, int], int] = {}
        # Per (method, route): a count per bucket (the last is +Inf) and the sum of seconds.
        self._latency: dict[tuple[str, str], tuple[list[int], list[float]]] = {}

    def count(self, method: str, route: str, status: int, seconds: float) -> None:
        if method not in self.METHODS:
            method = "other"
        key = (method, route, status)
        self._answers[key] = self._answers.get(key, 0) + 1
        found = self._latency.get((method, route))
        if found is None:
            found = self._latency[(method, route)] = ([0] * (len(self.BUCKETS) + 1), [0.0])
        found[0][bisect_left(self.BUCKETS, seconds)] += 1
        found[1][0] += seconds

    def collect(self) -> Iterator[Metric]:
        answers = CounterMetricFamily(
            "xentree_http_requests", "HTTP requests answered",
            labels=("method", "route", "status"),
        )
        for (method, route, status), n in list(self._answers.items()):
            answers.add_metric((method, route, str(status)), n)
        yield answers
        latency = HistogramMetricFamily(
            "xentree_http_request_seconds", "HTTP request latency", labels=("method", "route")
        )
        for (method, route), (counts, total) in list(self._latency.items()):
            cumulative = itertools.accumulate(counts)
            latency.add_metric((method, route), list(zip(_BOUNDS, cumulative, strict=True)),
                               total[0])
        yield latency


_BOUNDS = (*(str(b) for b in HttpMetrics.BUCKETS), "+Inf")
HTTP_METRICS = HttpMetrics()
REGISTRY.register(HTTP_METRICS)

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


async def serve_http(
    app: ASGIApp,
    scope: HTTPScope,
    receive: Receive,
    send: Send,
    on_start: Callable[[HTTPResponseStartEvent, Scope], None],
) -> None:
    """Serve one HTTP request with `app`, in one layer around it: the request id in the
    logs' context, the answer's start stamped (request id, security headers) and handed
    to `on_start`, and the answer counted and timed. One wrapper of `send` for every
    answer, including the router's own 404 and 405 (Litestar's middleware wraps matched
    routes only): a middleware, its own exception layer and a before-send hook were each
    another await on every message, about a fifth of a quota read's CPU in the server."""
    started = time.perf_counter()
    status = 500
    request_id = request_id_of(scope)
    token = request_id_var.set(request_id)

    async def answer(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            stamp_response(message, request_id)
            on_start(message, scope)
        await send(message)

    try:
        await app(scope, receive, answer)
    finally:
        request_id_var.reset(token)
        HTTP_METRICS.count(
            scope["method"], _route(scope), status, time.perf_counter() - started
        )


def request_id_of(scope: Scope) -> str:
    """The request's id: the client's `X-Request-Id` when usable, else a new one. Kept in
    the scope's state, so the logs and the answer name the same id."""
    state: dict[str, Any] = scope.setdefault("state", {})
    request_id = state.get(_STATE_KEY)
    if not isinstance(request_id, str):
        sent = header_value(scope, b"x-request-id")
        request_id = sent if sent and _CLIENT_ID.match(sent) else new_request_id()
        state[_STATE_KEY] = request_id
    return request_id


def stamp_response(message: HTTPResponseStartEvent, request_id: str) -> None:
    """The request id and the security headers on an answer's start message (those the
    answer does not set itself)."""
    headers = list(message.get("headers", ()))
    present = {bytes(name).lower() for name, _ in headers}
    if b"x-request-id" not in present:
        headers.append((b"x-request-id", request_id.encode()))
    headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
    message["headers"] = headers


def header_value(scope: Scope, name: bytes) -> str | None:
    """A request header's first value (latin-1, as Litestar decodes headers), read from
    the scope's raw headers, whose names ASGI servers give in lower case: cheaper than the
    request's header map, which a quota read would build for nothing else."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _route(scope: Scope) -> str:
    """The matched route's path template, as `/api/live/transcripts/{id}` (bounded label
    values: never the raw path)."""
    template = scope.get("path_template")
    return template if isinstance(template, str) and template else "unmatched"
