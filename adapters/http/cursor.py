"""Signed page cursors: opaque to clients, bound to the caller, and refused when altered.

A cursor is a keyset position (the sort key of the last row served) plus an HMAC over it
and the caller's identity, under a key derived from the server's API-key pepper (the one
secret every API process already shares). A cursor edited by hand, or presented by another
user, fails the check and answers 400; the query also filters by owner, so even a valid
cursor can only ever move within the caller's own rows.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from adapters.http.problems import BadRequest
from application.principal import Principal

_PURPOSE = b"xentree-live page cursor v1"
_MAC_BYTES = 16


def cursor_key(pepper: bytes) -> bytes:
    return hmac.new(pepper, _PURPOSE, hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, principal: Principal, kind: str, payload: bytes) -> bytes:
    owner = f"{kind}\x00{principal.tenant_id}\x00{principal.user_id}\x00".encode()
    return hmac.new(key, owner + payload, hashlib.sha256).digest()[:_MAC_BYTES]


def sign(key: bytes, principal: Principal, kind: str, payload: bytes) -> str:
    return f"{_b64(payload)}.{_b64(_mac(key, principal, kind, payload))}"


def verify(key: bytes, principal: Principal, kind: str, cursor: str) -> bytes:
    """The payload of a cursor this API issued to this caller, else BadRequest."""
    encoded, _, mac = cursor.partition(".")
    try:
        payload, presented = _unb64(encoded), _unb64(mac)
    except (binascii.Error, ValueError):
        raise BadRequest("cursor is not one this API issued") from None
    if not hmac.compare_digest(presented, _mac(key, principal, kind, payload)):
        raise BadRequest("cursor is not one this API issued")
    return payload
