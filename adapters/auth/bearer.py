"""Verification of user access tokens (`Authorization: Bearer <JWT>`)."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

import jwt

from adapters.auth.dev_issuer import DevIssuer
from adapters.auth.errors import AuthenticationError
from adapters.auth.identifiers import is_valid_identifier
from adapters.auth.jwk import ALLOWED_ALGORITHMS, VerificationKey, b64url_decode
from adapters.auth.key_sources import JwksUrlKeys, KeySource, StaticKeys, load_jwks_file
from adapters.auth.scopes import KNOWN_SCOPES, parse_scope
from adapters.auth.strict_json import loads_object
from application.principal import ALL_USER_SCOPES, Principal
from application.settings import Settings

log = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 8 * 1024
INVALID = "invalid token"
EXPIRED = "token expired"

_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
# Headers that would let the token choose its own key or demand extensions we do not
# implement: `jku`/`x5u` make us fetch attacker URLs, `jwk`/`x5c` embed the attacker's
# key, `crit` names extensions we cannot honour, `b64: false` changes what is signed.
_FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "x5c", "jwk", "crit", "b64"})
# Access tokens say `JWT` (RFC 7519) or `at+jwt` (RFC 9068); anything else (say, an ID
# token of another type, or a future integration token type) is not a user access token.
_ACCEPTED_TYP = frozenset({"jwt", "at+jwt", "application/at+jwt"})
_REQUIRED_CLAIMS = ["exp", "iat", "sub", "iss", "aud"]
# A token verified once is taken as verified again (the same string) until it expires, for
# at most this long: a key the provider withdraws stops working within it. The signature
# check is most of a request's authentication cost.
VERIFIED_CACHE_SECONDS = 60.0
VERIFIED_CACHE_SIZE = 10_000


class BearerVerifier:
    def __init__(
        self,
        sources: Sequence[KeySource],
        *,
        issuer: str,
        audience: str,
        leeway_seconds: int,
    ) -> None:
        self._sources = tuple(sources)
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        # token -> (its principal, when to verify it afresh, epoch seconds)
        self._verified: dict[str, tuple[Principal, float]] = {}
        self._verified_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> BearerVerifier:
        sources: list[KeySource] = []
        if settings.dev_issuer:
            sources.append(StaticKeys([DevIssuer.load_or_create(settings).verification_key()]))
        if settings.jwks_file:
            sources.append(load_jwks_file(settings.jwks_file))
        if settings.jwks_url:
            sources.append(JwksUrlKeys(settings.jwks_url))
        if not sources:
            raise ValueError(
                "no bearer key source: set XENTREE_JWKS_FILE, XENTREE_JWKS_URL or "
                "XENTREE_DEV_ISSUER"
            )
        return cls(
            sources,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway_seconds=settings.jwt_leeway_seconds,
        )

    def verify(self, token: str, now: float | None = None) -> Principal:
        """The principal a valid token names; AuthenticationError for anything else.

        `now` (seconds since the epoch) is for tests; production passes nothing and the
        time checks run against the wall clock (both ours and pyjwt's), and a token seen
        before is answered from the cache of verified tokens.
        """
        if now is not None:
            return self._verify(token, now)
        clock = time.time()
        cached = self.cached(token, clock)
        if cached is not None:
            return cached
        principal, exp = self._verify_with_expiry(token, None)
        until = min(exp + self._leeway, clock + VERIFIED_CACHE_SECONDS)
        with self._verified_lock:
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.clear()
            self._verified[token] = (principal, until)
        return principal

    def cached(self, token: str, now: float | None = None) -> Principal | None:
        """The principal of a token this verifier accepted a moment ago (None: unknown or
        due to be verified afresh)."""
        hit = self._verified.get(token)
        if hit is not None and (time.time() if now is None else now) < hit[1]:
            return hit[0]
        return None

    def _verify(self, token: str, now: float | None) -> Principal:
        return self._verify_with_expiry(token, now)[0]

    def _verify_with_expiry(self, token: str, now: float | None) -> tuple[Principal, float]:
        header, payload = _parse_unverified(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            raise AuthenticationError(INVALID)
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYP):
            raise AuthenticationError(INVALID)
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or not 1 <= len(kid) <= 256):
            raise AuthenticationError(INVALID)
        # Cheap claim checks before any signature work: a token we would refuse anyway
        # never costs an RSA verification or a JWKS refetch.
        _check_times(payload, time.time() if now is None else now, self._leeway)

        claims = self._verify_signature(token, alg, kid, now)
        return _principal(claims), float(claims["exp"])

    def _verify_signature(
        self, token: str, alg: str, kid: str | None, now: float | None
    ) -> dict[str, Any]:
        candidates = self._candidates(alg, kid)
        if not candidates and kid is not None and any(s.refresh() for s in self._sources):
            candidates = self._candidates(alg, kid)  # the provider may have rotated keys
        if not candidates:
            raise AuthenticationError(INVALID)
        clock_checks = now is None
        for candidate in candidates:
            try:
                return jwt.decode(
                    token,
                    key=candidate.key,  # a key object, never PEM/bytes: no type guessing
                    algorithms=[alg],
                    issuer=self._issuer,
                    audience=self._audience,
                    leeway=self._leeway,
                    options={
                        "require": _REQUIRED_CLAIMS,
                        "verify_signature": True,
                        "verify_iss": True,
                        "verify_aud": True,
                        "verify_exp": clock_checks,
                        "verify_nbf": clock_checks,
                        "verify_iat": clock_checks,
                    },
                )
            except jwt.ExpiredSignatureError as exc:
                raise AuthenticationError(EXPIRED) from exc
            except jwt.InvalidSignatureError:
                continue  # several keys may share a kid during rotation; try the next
            except (jwt.InvalidTokenError, ValueError, TypeError) as exc:
                raise AuthenticationError(INVALID) from exc
        raise AuthenticationError(INVALID)

    def _candidates(self, alg: str, kid: str | None) -> list[VerificationKey]:
        keys = [key for source in self._sources for key in source.trusted_keys()]
        if kid is None:
            # Without a kid we may only guess when there is nothing to guess between.
            matching = keys if len(keys) == 1 else []
        else:
            matching = [key for key in keys if key.kid == kid]
        # The key decides the algorithm family: a token claiming ES256 against an RSA key
        # is refused here, before pyjwt sees it.
        return [key for key in matching if alg in key.algorithms]


def _parse_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split and decode a compact JWS without trusting it yet."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise AuthenticationError(INVALID)
    parts = token.split(".")
    if len(parts) != 3 or not all(_SEGMENT.fullmatch(part) for part in parts):
        raise AuthenticationError(INVALID)
    try:
        header = loads_object(b64url_decode(parts[0]))
        # pyjwt parses the payload again after verifying; checking it here too means a
        # payload with duplicate claims is refused rather than read as "last one wins".
        payload = loads_object(b64url_decode(parts[1]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AuthenticationError(INVALID) from exc
    if _FORBIDDEN_HEADERS & header.keys():
        raise AuthenticationError(INVALID)
    return header, payload


def _number(value: object) -> float | None:
    # bool is an int subclass; `"exp": true` is not a time.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _check_times(payload: dict[str, Any], now: float, leeway: float) -> None:
    exp = _number(payload.get("exp"))
    iat = _number(payload.get("iat"))
    if exp is None or iat is None:
        raise AuthenticationError(INVALID)
    if "nbf" in payload:
        nbf = _number(payload["nbf"])
        if nbf is None or nbf > now + leeway:
            raise AuthenticationError(INVALID)
    if iat > now + leeway:
        raise AuthenticationError(INVALID)
    if exp <= now - leeway:
        raise AuthenticationError(EXPIRED)


def _principal(claims: dict[str, Any]) -> Principal:
    sub, tid = claims.get("sub"), claims.get("tid")
    if not is_valid_identifier(sub) or not is_valid_identifier(tid):
        raise AuthenticationError(INVALID)
    scope = claims.get("scope")
    if scope is None:
        scopes = ALL_USER_SCOPES
    elif isinstance(scope, str):
        try:
            # Providers add scopes of their own (openid, profile); keep only ours.
            scopes = parse_scope(scope, allow_unknown=True) & KNOWN_SCOPES
        except ValueError as exc:
            raise AuthenticationError(INVALID) from exc
    else:
        raise AuthenticationError(INVALID)
    jti = claims.get("jti")
    return Principal(
        tenant_id=tid,
        user_id=sub,
        scopes=frozenset(scopes),
        credential="bearer",
        credential_id=jti if is_valid_identifier(jti) else None,
    )
