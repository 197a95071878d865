"""Integration-token rules: lifetimes, grantable scopes, the claims a token carries, and how
long a superseded signing key must stay published. Pure: time is always passed in."""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec

from domain.errors import InvalidValue, ScopeNotHeld

MIN_TTL_SECONDS = 30
MAX_TTL_SECONDS = 600
DEFAULT_TTL_SECONDS = 120
# An embed acts for one user on the live endpoints; it never manages or verifies tokens.
GRANTABLE_SCOPES: frozenset[str] = frozenset({"live:read", "live:write"})
MAX_SCOPES = 8
MAX_REASON_LENGTH = 200
DEFAULT_REVOKE_REASON = "unspecified"
# The reason a rotation records; a rotated token's sessions carry on under its successor,
# so a plain revoke may not pass itself off as one.
ROTATED = "rotated"


class TokenClaims(msgspec.Struct, frozen=True, kw_only=True):
    """What an integration token says, signed by the tenant's current key `kid`."""

    iss: str
    aud: str
    sub: str
    tid: str
    scope: str
    jti: str
    iat: int
    nbf: int
    exp: int


def check_grant(scopes: list[str], ttl_seconds: int, caller_scopes: frozenset[str]) -> list[str]:
    """The sorted, de-duplicated scopes of a grant the caller may make; InvalidValue if not.

    A caller may grant only live scopes it holds itself: a token can never carry more
    than the credential that asked for it."""
    if not MIN_TTL_SECONDS <= ttl_seconds <= MAX_TTL_SECONDS:
        raise InvalidValue(
            "ttl_seconds", f"must be between {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS}"
        )
    wanted = frozenset(scopes)
    if not wanted or len(scopes) > MAX_SCOPES:
        raise InvalidValue("scopes", f"must name 1 to {MAX_SCOPES} scopes")
    if not wanted <= GRANTABLE_SCOPES:
        raise InvalidValue("scopes", "integration tokens may hold only live:read and live:write")
    if not wanted <= caller_scopes:
        raise ScopeNotHeld(min(wanted - caller_scopes))
    return sorted(wanted)


def check_revoke_reason(reason: str | None) -> str:
    """The reason a revocation records: free text (for example `compromised`, `logout`),
    1-200 printable characters; `unspecified` when none is given."""
    if reason is None:
        return DEFAULT_REVOKE_REASON
    if not 1 <= len(reason) <= MAX_REASON_LENGTH or not reason.strip():
        raise InvalidValue("reason", f"must be 1-{MAX_REASON_LENGTH} characters")
    if not reason.isprintable():
        raise InvalidValue("reason", "must not contain control or format characters")
    if reason == ROTATED:
        raise InvalidValue("reason", f"'{ROTATED}' is reserved for token rotation")
    return reason


def token_claims(
    *,
    issuer: str,
    audience: str,
    subject: str,
    tenant_id: str,
    scopes: list[str],
    jti: str,
    issued_at: datetime,
    expires_at: datetime,
) -> TokenClaims:
    iat = int(issued_at.timestamp())
    return TokenClaims(
        iss=issuer,
        aud=audience,
        sub=subject,
        tid=tenant_id,
        scope=" ".join(scopes),
        jti=jti,
        iat=iat,
        nbf=iat,
        exp=int(expires_at.timestamp()),
    )


def published_until(superseded_at: datetime, leeway_seconds: int) -> datetime:
    """A superseded key verifies tokens it signed until the last of them has expired."""
    return superseded_at + timedelta(seconds=MAX_TTL_SECONDS + leeway_seconds)
