"""Every error the API answers is an RFC 9457 problem, mapped here and nowhere else."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec
import psycopg
import psycopg_pool
from eventsourcing import persistence as es_persistence
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from adapters.auth.errors import (
    AuthenticationError,
    CredentialNotAccepted,
    InsufficientScope,
    MissingCredentials,
)
from adapters.ratelimit import RateLimited, RateLimitState
from application.idempotency import IdempotencyMismatch
from domain.errors import (
    DomainError,
    InvalidValue,
    NotFound,
    QuotaExceeded,
    ScopeNotHeld,
    SessionAlreadyActive,
    SessionNotActive,
)

PROBLEM_JSON = "application/problem+json"

TITLES = {
    "invalid_request": "Invalid request",
    "unauthenticated": "Authentication required",
    "insufficient_scope": "Insufficient scope",
    "not_found": "Not found",
    "live_quota_exceeded": "Live quota exceeded",
    "session_already_active": "Session already active",
    "session_not_active": "Session not active",
    "conflict": "Conflict",
    "rate_limited": "Too many requests",
    "payload_too_large": "Payload too large",
    "unavailable": "Service unavailable",
    "internal": "Internal error",
}


class Problem(msgspec.Struct, kw_only=True):
    """The documented shape of every error answer (plus code-specific fields)."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str


class Unavailable(Exception):
    """A dependency is down or a read could not catch up in time; retry later."""

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class BadRequest(Exception):
    def __init__(self, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


def problem(
    request: Request[Any, Any, Any],
    status: int,
    code: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response[bytes]:
    body = {
        "type": f"https://docs.xentree.live/problems/{code.replace('_', '-')}",
        "title": TITLES.get(code, code),
        "status": status,
        "detail": detail,
        "code": code,
        "instance": request.url.path,
        **extra,
    }
    return Response(
        content=msgspec.json.encode(body),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers={**rate_limit_headers(request), **(headers or {})},
    )


def rate_limit_headers(request: Request[Any, Any, Any]) -> dict[str, str]:
    """The rate-limit headers of a call that was counted (its endpoint is rate limited):
    every answer of such an endpoint carries them, errors included."""
    state = request.state.get("rate_limit")
    return state.headers() if isinstance(state, RateLimitState) else {}


def _rate_limited(request: Request[Any, Any, Any], exc: RateLimited) -> Response[bytes]:
    return problem(
        request,
        429,
        "rate_limited",
        f"too many {exc.state.policy.name} calls for this tenant; retry after Retry-After",
        {**exc.state.headers(), "Retry-After": str(exc.state.reset_seconds)},
    )


def _authentication(request: Request[Any, Any, Any], exc: AuthenticationError) -> Response[bytes]:
    challenge = 'Bearer realm="xentree-live"'
    if not isinstance(exc, MissingCredentials):
        challenge += ', error="invalid_token"'
    return problem(request, 401, "unauthenticated", exc.detail, {"WWW-Authenticate": challenge})


def _scope(request: Request[Any, Any, Any], exc: InsufficientScope) -> Response[bytes]:
    return problem(
        request,
        403,
        "insufficient_scope",
        f"this credential lacks the scope {exc.scope}",
        {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{exc.scope}"'},
        scope=exc.scope,
    )


def _scope_not_held(request: Request[Any, Any, Any], exc: ScopeNotHeld) -> Response[bytes]:
    return problem(
        request,
        403,
        "insufficient_scope",
        f"scopes: only scopes this credential holds can be handed on, and it lacks {exc.scope}",
        scope=exc.scope,
    )


def _credential(request: Request[Any, Any, Any], exc: CredentialNotAccepted) -> Response[bytes]:
    kind = exc.credential.replace("_", " ")
    return problem(
        request, 403, "insufficient_scope", f"this endpoint does not accept {kind} credentials"
    )


def _quota(request: Request[Any, Any, Any], exc: QuotaExceeded) -> Response[bytes]:
    extra: dict[str, Any] = {"remaining_seconds": 0, "period_end": _utc(exc.period_end)}
    if exc.session_id is not None:
        extra["session_id"] = exc.session_id
    return problem(
        request,
        402,
        "live_quota_exceeded",
        "the live quota for this period is used up; it resets at period_end",
        _position(exc),
        **extra,
    )


def _position(exc: DomainError) -> dict[str, str]:
    return {} if exc.event_position is None else {"X-Event-Position": str(exc.event_position)}


def _utc(text: str) -> datetime | str:
    """An ISO time as a UTC datetime, so it is written like every other time in the API
    (`...Z`, the form the quota answer uses), not as the domain's `isoformat()`."""
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        return text


def _already_active(request: Request[Any, Any, Any], exc: SessionAlreadyActive) -> Response[bytes]:
    return problem(
        request,
        409,
        "session_already_active",
        "the concurrent session limit is reached; end the active session first",
        session_id=exc.session_id,
    )


def _not_active(request: Request[Any, Any, Any], exc: SessionNotActive) -> Response[bytes]:
    return problem(
        request,
        409,
        "session_not_active",
        f"the session has ended ({exc.end_reason})",
        _position(exc),
        session_id=exc.session_id,
        end_reason=exc.end_reason,
    )


def _not_found(request: Request[Any, Any, Any], exc: NotFound) -> Response[bytes]:
    return problem(request, 404, "not_found", f"no such {exc.what}")


def _invalid(request: Request[Any, Any, Any], exc: InvalidValue) -> Response[bytes]:
    return problem(
        request, 422, "invalid_request", f"{exc.field}: {exc.reason}", field=exc.field
    )


def _bad_request(request: Request[Any, Any, Any], exc: BadRequest) -> Response[bytes]:
    return problem(request, exc.status, "invalid_request", exc.detail)


def _mismatch(request: Request[Any, Any, Any], exc: IdempotencyMismatch) -> Response[bytes]:
    return problem(
        request,
        409,
        "conflict",
        "this Idempotency-Key was already used with a different request",
    )


def _unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    retry_after = exc.retry_after if isinstance(exc, Unavailable) else 2
    detail = exc.detail if isinstance(exc, Unavailable) else "a backing service is unavailable"
    return problem(
        request, 503, "unavailable", detail, {"Retry-After": str(retry_after)}
    )


def _validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    return problem(request, 400, "invalid_request", _validation_detail(exc))


def _validation_detail(exc: ValidationException) -> str:
    detail = exc.detail or "invalid request"
    extra = exc.extra
    if isinstance(extra, list) and extra:
        messages = [_located(e) if isinstance(e, dict) else str(e) for e in extra]
        detail = "; ".join(m for m in messages if m) or detail
    return detail


# Litestar's message when a handler's body is missing altogether (a KeyError's text).
_NO_BODY = "'data'"


def _located(error: dict[str, Any]) -> str:
    """Litestar's message with the input it is about (`session_type: Expected ...`); a
    message about the body as a whole (key `data`) names what it means itself."""
    message = str(error.get("message", ""))
    if message == _NO_BODY:
        return "the request needs a JSON body"
    key = error.get("key")
    if not message or not isinstance(key, str) or key in ("", "data"):
        return message
    return f"{key}: {message}"


_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "insufficient_scope",
    404: "not_found",
    405: "invalid_request",
    409: "conflict",
    413: "payload_too_large",
    415: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}


def unprocessable_body(
    request: Request[Any, Any, Any], exc: ValidationException
) -> Response[bytes]:
    """For endpoints whose contract answers 422 to a well-formed body of the wrong shape
    (types, unknown or missing fields); malformed JSON stays 400 (an HTTPException)."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    in_body = any(isinstance(e, dict) and e.get("source") == "body" for e in extra)
    return problem(request, 422 if in_body else 400, "invalid_request", _validation_detail(exc))


# What Litestar raises (as a 500) when the client goes away before its body has arrived.
_CLIENT_GONE = "client disconnected prematurely"


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    if status >= 500 and exc.detail == _CLIENT_GONE:
        # Nobody is left to read an answer: not a server error, and nothing to log.
        return problem(request, 400, "invalid_request", "the client went away mid-request")
    if status >= 500:
        return _internal(request, exc)
    code = _HTTP_CODES.get(status, "invalid_request")
    detail = exc.detail or TITLES[code]
    if status == 413:
        detail = "the request body is larger than the configured limit"
    return problem(request, status, code, detail, exc.headers)


def _too_deep(request: Request[Any, Any, Any], exc: RecursionError) -> Response[bytes]:
    # Litestar parses a body to Python objects before converting it to its Struct, and the
    # parser recurses per nesting level: `[[[[...` a hundred thousand deep ends here.
    # Nothing else in the API recurses over client input.
    return problem(request, 400, "invalid_request", "the JSON body is nested too deeply")


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    request.logger.exception("unhandled error", exc_info=exc)
    return problem(request, 500, "internal", "an internal error occurred; it has been logged")


def exception_handlers() -> dict[type[Exception] | int, Callable[..., Response[Any]]]:
    return {
        AuthenticationError: _authentication,
        InsufficientScope: _scope,
        CredentialNotAccepted: _credential,
        ScopeNotHeld: _scope_not_held,
        QuotaExceeded: _quota,
        SessionAlreadyActive: _already_active,
        SessionNotActive: _not_active,
        NotFound: _not_found,
        InvalidValue: _invalid,
        BadRequest: _bad_request,
        IdempotencyMismatch: _mismatch,
        Unavailable: _unavailable,
        RateLimited: _rate_limited,
        psycopg.OperationalError: _unavailable,
        psycopg.InterfaceError: _unavailable,
        psycopg_pool.PoolTimeout: _unavailable,
        es_persistence.OperationalError: _unavailable,
        es_persistence.InterfaceError: _unavailable,
        ValidationException: _validation,
        HTTPException: _http,
        RecursionError: _too_deep,
        Exception: _internal,
    }


