"""Documented error answers, so the OpenAPI document names every status we send."""

from __future__ import annotations

from litestar.openapi.datastructures import ResponseSpec

from adapters.http.problems import Problem


def _spec(description: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=Problem, description=description, media_type="application/problem+json"
    )


_COMMON = {
    400: _spec("Malformed request: bad JSON, unknown fields, wrong types"),
    401: _spec("Missing or invalid credentials"),
    403: _spec("The credential lacks the scope, or its kind is not accepted here"),
    413: _spec("Request body over the configured limit"),
    503: _spec("A backing service is unavailable; retry after Retry-After"),
}

COMMAND_PROBLEMS = {
    **_COMMON,
    402: _spec("The live quota of the period is used up (not retryable until period_end)"),
    404: _spec("No such session for this caller"),
    409: _spec("Session already active, session not active, or Idempotency-Key reuse"),
    422: _spec("A value is out of range"),
}

READ_PROBLEMS = {**_COMMON, 404: _spec("Not found for this caller")}

KEY_PROBLEMS = {
    **_COMMON,
    404: _spec("No such API key for this caller"),
    409: _spec("Idempotency-Key reuse with another request"),
    422: _spec("A value is out of range"),
}

NICKNAME_PROBLEMS = {
    **_COMMON,
    409: _spec("Idempotency-Key reuse with another request"),
    422: _spec("The nickname breaks a rule (named in detail and field)"),
}

TRANSCRIPT_PROBLEMS = {
    **_COMMON,
    404: _spec("session_id names no session of this caller"),
    409: _spec("Idempotency-Key reuse with another request"),
    422: _spec("A value breaks a rule; field names it, e.g. transcripts[12].text"),
}

READY_PROBLEMS = {
    503: _spec("Not ready: PostgreSQL or Kafka unreachable, or projections too far behind "
               "(the checks are in `checks`)"),
}
