"""Integration tokens on the wire: compact JWS, EdDSA (Ed25519), header
`{"alg": "EdDSA", "typ": "xtl-int+jwt", "kid": <RFC 7638 thumbprint>}`.

Verification is strict and says only yes or no (`None`): the verify endpoint must not tell
an attacker which check failed. What is refused before any signature work: anything but a
short compact JWS of base64url parts; duplicate JSON keys; any header member besides alg,
typ and kid (so no jwk/jku/x5u/x5c/crit/b64: the token never chooses its key); any alg but
EdDSA; another typ (a user access token is not an integration token, nor the reverse); a
kid we did not publish; a `tid` that is not the tenant owning that kid. pyjwt then checks
the signature with the key object and algorithms=["EdDSA"] only, iss, aud and required
claims; the claims' types, scopes and times are checked here as well. Revocation is checked
last, against PostgreSQL, on every call (`IntegrationTokenVerifier.verify`).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import jwt
import msgspec

from adapters.auth.errors import AuthenticationError
from adapters.auth.identifiers import is_valid_identifier
from adapters.auth.jwk import b64url_decode
from adapters.auth.scopes import parse_scope
from adapters.auth.strict_json import loads_object
from adapters.integration.store import GrantStatus, IntegrationStore
from adapters.integration.vault import SealedKeyVault
from application.principal import Principal
from domain.integration import GRANTABLE_SCOPES, MAX_TTL_SECONDS, TokenClaims

log = logging.getLogger(__name__)

TOKEN_TYPE = "xtl-int+jwt"  # noqa: S105 - a media type, not a secret
ALGORITHM = "EdDSA"
# Our tokens are ~450 characters; anything much longer is not one of them and is refused
# before any decoding work.
MAX_TOKEN_LENGTH = 2048
# Clock skew allowed on iat/nbf between API hosts; expiry itself gets none: a token stops
# working the second it expires.
CLOCK_SKEW_SECONDS = 5

_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_KID = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url SHA-256
_JTI = re.compile(r"[A-Za-z0-9_-]{16,64}")
_HEADER_MEMBERS = frozenset({"alg", "typ", "kid"})
_REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]
SIGNED_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    claims: TokenClaims
    kid: str
    scopes: frozenset[str]


def _split(token: object) -> tuple[str, str, str] | None:
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        return None
    parts = token.split(".")
    if len(parts) != 3 or not all(_SEGMENT.fullmatch(part) for part in parts):
        return None
    return parts[0], parts[1], parts[2]


def _json_part(segment: str) -> dict[str, Any] | None:
    try:
        return loads_object(b64url_decode(segment))
    except (ValueError, UnicodeDecodeError):
        return None


def is_integration_token(token: str) -> bool:
    """Whether a bearer token claims to be an integration token (its header's typ), so
    authentication can route it; says nothing about validity."""
    parts = _split(token)
    header = _json_part(parts[0]) if parts is not None else None
    return header is not None and header.get("typ") == TOKEN_TYPE


class TokenSigner:
    def __init__(self, vault: SealedKeyVault) -> None:
        self._vault = vault

    def sign(self, claims: TokenClaims, kid: str) -> str:
        tenant_id, private_key = self._vault.private_key(kid)
        if tenant_id != claims.tid:
            raise RuntimeError("refusing to sign a tenant's claims with another tenant's key")
        return jwt.encode(
            msgspec.structs.asdict(claims),
            private_key,
            algorithm=ALGORITHM,
            headers={"typ": TOKEN_TYPE, "kid": kid},
        )


class IntegrationTokenVerifier:
    def __init__(self, store: IntegrationStore, *, issuer: str, audience: str) -> None:
        self._store = store
        self._issuer = issuer
        self._audience = audience
        # token -> its checked header and claims (the signature work is done once).
        self._signed: dict[str, VerifiedToken] = {}

    def verify(
        self, token: object, tenant_id: str | None, now: float | None = None
    ) -> VerifiedToken | None:
        """The token if it is valid and active right now (for `tenant_id`, when given)."""
        checked = self._for_tenant(self.check(token, now), tenant_id)
        if checked is None:
            return None
        return checked if _active(checked, self._store.grant_status(checked.claims.jti)) else None

    async def verify_async(self, token: object, tenant_id: str | None) -> VerifiedToken | None:
        """`verify`, with the revocation read on the event loop."""
        checked = self._for_tenant(self.check(token), tenant_id)
        if checked is None:
            return None
        status = await self._store.grant_status_async(checked.claims.jti)
        return checked if _active(checked, status) else None

    @staticmethod
    def _for_tenant(checked: VerifiedToken | None, tenant_id: str | None) -> VerifiedToken | None:
        if checked is None or (tenant_id is not None and checked.claims.tid != tenant_id):
            return None
        return checked

    def authenticate(self, token: str) -> Principal:
        """The principal an active integration token stands for, or AuthenticationError."""
        return _principal(self.verify(token, None))

    async def authenticate_async(self, token: str) -> Principal:
        """`authenticate`, with the revocation read on the event loop."""
        return _principal(await self.verify_async(token, None))

    def check(
        self, token: object, now: float | None = None, *, times: bool = True
    ) -> VerifiedToken | None:
        """Header, signature and claims, but not revocation. `times=False` accepts an
        expired token (revoking one by token is harmless); `now` is for tests.

        A token whose signature and claims were checked once is not checked again: a
        token cannot change, nor the key its kid names (the kid is the key's thumbprint).
        Its times are checked on every call; revocation by the callers, on every call."""
        if now is None and isinstance(token, str):
            seen = self._signed.get(token)
            if seen is not None:
                if times and not _in_time(seen.claims, time.time()):
                    return None
                return seen
        verified = self._check(token, now, times)
        if verified is not None and now is None:
            assert isinstance(token, str)
            if len(self._signed) >= SIGNED_CACHE_SIZE:
                self._signed.clear()
            self._signed[token] = verified
        return verified

    def _check(self, token: object, now: float | None, times: bool) -> VerifiedToken | None:
        parts = _split(token)
        if parts is None:
            return None
        header, payload = _json_part(parts[0]), _json_part(parts[1])
        if header is None or payload is None:
            return None
        kid = header.get("kid")
        if (
            header.keys() != _HEADER_MEMBERS
            or header.get("alg") != ALGORITHM
            or header.get("typ") != TOKEN_TYPE
            or not isinstance(kid, str)
            or not _KID.fullmatch(kid)
        ):
            return None
        key = self._store.public_key(kid)
        # A tenant's token is signed by that tenant's key and no other.
        if key is None or payload.get("tid") != key.tenant_id:
            return None
        assert isinstance(token, str)
        clock = time.time() if now is None else now
        pyjwt_times = times and now is None
        try:
            claims = jwt.decode(
                token,
                key=key.key,  # a key object, never bytes or PEM: no type guessing
                algorithms=[ALGORITHM],
                issuer=self._issuer,
                audience=self._audience,
                leeway=CLOCK_SKEW_SECONDS,
                options={
                    "require": _REQUIRED_CLAIMS,
                    "verify_signature": True,
                    "verify_iss": True,
                    "verify_aud": True,
                    "verify_exp": pyjwt_times,
                    "verify_nbf": pyjwt_times,
                    "verify_iat": pyjwt_times,
                },
            )
            parsed = msgspec.convert(claims, TokenClaims, strict=True)
        except (jwt.InvalidTokenError, msgspec.ValidationError, ValueError, TypeError):
            return None
        scopes = _scopes(parsed)
        if scopes is None or not _claims_sane(parsed):
            return None
        if times and not _in_time(parsed, clock):
            return None
        return VerifiedToken(claims=parsed, kid=kid, scopes=scopes)


def _active(checked: VerifiedToken, status: GrantStatus | None) -> bool:
    """What the database says now: issued by us, not revoked, by this tenant's key."""
    return (
        status is not None
        and status.active
        and status.tenant_id == checked.claims.tid
        and status.kid == checked.kid
    )


def _scopes(claims: TokenClaims) -> frozenset[str] | None:
    try:
        scopes = parse_scope(claims.scope)
    except ValueError:
        return None
    return scopes if scopes and scopes <= GRANTABLE_SCOPES else None


def _claims_sane(claims: TokenClaims) -> bool:
    return (
        is_valid_identifier(claims.sub)
        and is_valid_identifier(claims.tid)
        and _JTI.fullmatch(claims.jti) is not None
        and claims.nbf >= claims.iat
        and 0 < claims.exp - claims.iat <= MAX_TTL_SECONDS
    )


def _in_time(claims: TokenClaims, now: float) -> bool:
    return (
        claims.iat <= now + CLOCK_SKEW_SECONDS
        and claims.nbf <= now + CLOCK_SKEW_SECONDS
        and now < claims.exp
    )


def _principal(verified: VerifiedToken | None) -> Principal:
    """Who an active integration token stands for (AuthenticationError for any other)."""
    if verified is None:
        raise AuthenticationError("invalid token")
    return Principal(
        tenant_id=verified.claims.tid,
        user_id=verified.claims.sub,
        scopes=verified.scopes,
        credential="integration",
        credential_id=verified.claims.jti,
    )
