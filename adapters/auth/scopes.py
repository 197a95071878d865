"""Scope strings (RFC 6749 section 3.3 syntax) and the check every endpoint makes."""

from __future__ import annotations

import re

from adapters.auth.errors import InsufficientScope
from application.principal import Principal

LIVE_READ = "live:read"
LIVE_WRITE = "live:write"
INTEGRATION_MANAGE = "integration:manage"
INTEGRATION_VERIFY = "integration:verify"
AUDIT_READ = "audit:read"

KNOWN_SCOPES: frozenset[str] = frozenset(
    {LIVE_READ, LIVE_WRITE, INTEGRATION_MANAGE, INTEGRATION_VERIFY, AUDIT_READ}
)

# RFC 6749: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ), i.e. printable ASCII except
# space, '"' and '\'. Anything else is a malformed token, not an unknown scope.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_MAX_SCOPE_LENGTH = 1000


def parse_scope(scope: str, *, allow_unknown: bool = False) -> frozenset[str]:
    """Split a space-separated scope string; raise ValueError if it is malformed.

    Separators are single spaces only (double spaces, tabs or edge spaces are empty items
    and rejected). The empty string is the empty set: a credential that explicitly has no
    scopes, which is not the same as an absent claim. Unknown scope names are rejected
    unless `allow_unknown` — the bearer verifier allows them because identity providers
    add their own (`openid`, `profile`), and then keeps only the ones we know.
    """
    if len(scope) > _MAX_SCOPE_LENGTH:
        raise ValueError("scope string is too long")
    if scope == "":
        return frozenset()
    items = scope.split(" ")
    for item in items:
        if not _SCOPE_TOKEN.fullmatch(item):
            raise ValueError("scope string has an empty item or a forbidden character")
    parsed = frozenset(items)
    if not allow_unknown:
        unknown = parsed - KNOWN_SCOPES
        if unknown:
            raise ValueError(f"unknown scope(s): {' '.join(sorted(unknown))}")
    return parsed


def require_scope(principal: Principal, scope: str) -> None:
    """Raise InsufficientScope unless the principal holds `scope`."""
    if scope not in KNOWN_SCOPES:
        # A typo in a route's required scope would otherwise deny everybody forever.
        raise ValueError(f"{scope!r} is not a known scope")
    if not principal.has_scope(scope):
        raise InsufficientScope(scope)
