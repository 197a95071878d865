"""JSON request bodies, checked as strictly as the contract says (SPEC section 2).

Litestar converts a body to its Struct leniently: the string "60" becomes the int 60, 1
becomes True, an epoch number becomes a datetime. `strict` converts the parsed body once
more with no coercion at all. A well-formed body of the wrong shape answers 422 naming the
field (`transcripts[3].text`, as section 6 asks for entries); a missing body or malformed
JSON stays 400, as do bad query parameters.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response
from litestar.exceptions import SerializationException, ValidationException

from adapters.http.problems import BadRequest, problem, unprocessable_body
from domain.errors import InvalidValue

T = TypeVar("T")

BODY = "body"
# Litestar's message when a handler's body is missing altogether (a KeyError's text).
_NO_BODY = "'data'"
_NAMED_FIELD = re.compile(r"field `([^`]+)`")


async def strict(request: Request[Any, Any, Any], cls: type[T]) -> T:
    """The request's JSON body as `cls`, converted without coercion; InvalidValue (422)
    naming the field otherwise."""
    try:
        parsed = await request.json()
    except SerializationException:
        raise BadRequest("the body is not valid JSON") from None
    try:
        return msgspec.convert(parsed, cls, strict=True)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `")
        raise InvalidValue(field_name(path.rstrip("`"), message), message) from None


def field_name(path: str, message: str) -> str:
    """`transcripts[3].text` from where the error is (msgspec's `$.transcripts[3]`,
    Litestar's `transcripts[3]`, or the root) and the member a missing- or unknown-field
    message names."""
    where = _where(path)
    named = _NAMED_FIELD.search(message)
    if named is None:
        return where or BODY
    return f"{where}.{named.group(1)}" if where else named.group(1)


def _where(path: str) -> str:
    return "" if path in ("", "$", "data") else path.removeprefix("$").removeprefix(".")


def invalid_body(request: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    """The controllers' handler for Litestar's validation errors: 422 with `field` for a
    body of the wrong shape; 400 for a missing body and for parameters outside the body."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    in_body = [e for e in extra if isinstance(e, dict) and e.get("source") == "body"]
    if not in_body:
        return unprocessable_body(request, exc)
    message = str(in_body[0].get("message") or "invalid body")
    if message == _NO_BODY:
        return problem(request, 400, "invalid_request", "the request needs a JSON body")
    where = str(in_body[0].get("key") or "")
    detail = f"{_where(where) or BODY}: {message}"
    return problem(request, 422, "invalid_request", detail, field=field_name(where, message))
