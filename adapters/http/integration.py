"""Integration tokens for enterprise embeds (SPEC section 5): grant, verify, rotate, revoke,
revoke-all, signing-key rotation, and the public JWKS and key fingerprint."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.exceptions import ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter

from adapters.auth.errors import AuthenticationError, CredentialNotAccepted, InsufficientScope
from adapters.auth.identifiers import MAX_IDENTIFIER_LENGTH, is_valid_identifier
from adapters.auth.jwk import jwk_thumbprint, key_from_jwk
from adapters.auth.scopes import INTEGRATION_MANAGE, INTEGRATION_VERIFY
from adapters.http.auth import BEARER_ONLY, authenticate, guarded, principal_of, security_for
from adapters.http.bodies import invalid_body, strict
from adapters.http.commands import idempotency, in_command_thread, in_thread, respond, services_of
from adapters.http.problems import BadRequest, Problem, rate_limit_headers
from adapters.http.schemas import KEY_PROBLEMS
from adapters.http.services import Services
from adapters.integration.tokens import VerifiedToken
from adapters.ratelimit import RateLimited
from application.integration import (
    AllTokensRevoked,
    GrantRecorded,
    SigningKeyRotated,
    TokenRevoked,
)
from application.principal import Principal
from application.results import Answer
from domain.errors import InvalidValue, NotFound
from domain.integration import DEFAULT_TTL_SECONDS, MAX_REASON_LENGTH, MAX_SCOPES

JWKS_MAX_AGE_SECONDS = 60
BEARER = "Bearer"

_PROBLEMS = {
    **KEY_PROBLEMS,
    404: ResponseSpec(
        data_container=Problem,
        description="No such (active) integration token in the caller's tenant",
        media_type="application/problem+json",
    ),
    422: ResponseSpec(
        data_container=Problem,
        description="A field has the wrong type or an out-of-range value",
        media_type="application/problem+json",
    ),
    429: ResponseSpec(
        data_container=Problem,
        description="The tenant's rate limit for this endpoint is used up; see Retry-After",
        media_type="application/problem+json",
    ),
}

TokenText = str  # never bounded here: an oversized token is inactive, not a bad request
Jti = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_REASON_LENGTH)]
# Calls refused before they have a tenant are counted here, so their answers carry the
# rate-limit headers too. Never a tenant id: ids hold no whitespace.
UNAUTHORISED_BUCKET = " unauthorised"


class GrantRequest(msgspec.Struct, forbid_unknown_fields=True):
    subject: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_IDENTIFIER_LENGTH)]
    scopes: Annotated[list[str], msgspec.Meta(min_length=1, max_length=MAX_SCOPES)]
    ttl_seconds: int = DEFAULT_TTL_SECONDS


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    token: TokenText


class VerifyRequest(msgspec.Struct, forbid_unknown_fields=True):
    # Any string: whatever is not one of our tokens is simply not an active token, and
    # introspection answers {"active": false}; a body without a string token is 422.
    token: Annotated[TokenText, msgspec.Meta(description="The token to introspect")]
    # RFC 7662 section 2.1 lets a caller hint at the token's type; there is one type here.
    token_type_hint: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class RevokeRequest(msgspec.Struct, forbid_unknown_fields=True):
    token: TokenText | None = None
    jti: Jti | None = None
    reason: Reason | None = None  # free text, e.g. "compromised" or "logout"


class RevokeAllRequest(msgspec.Struct, forbid_unknown_fields=True):
    issued_before: datetime


class RotateKeyRequest(msgspec.Struct, forbid_unknown_fields=True):
    """No fields: the body is optional, and `{}` when given."""


class GrantIssued(msgspec.Struct, kw_only=True):
    token: str
    token_type: str
    jti: str
    kid: str
    expires_at: datetime
    expires_in: int


class Introspection(msgspec.Struct, kw_only=True, omit_defaults=True):
    """RFC 7662: only `active` when the token is not active, whatever the reason."""

    active: bool
    sub: str | None = None
    tid: str | None = None
    scope: str | None = None
    jti: str | None = None
    kid: str | None = None
    iat: int | None = None
    nbf: int | None = None
    exp: int | None = None
    iss: str | None = None
    aud: str | None = None
    token_type: str | None = None


class Jwks(msgspec.Struct):
    keys: list[dict[str, str]]


class Fingerprint(msgspec.Struct, rename={"tenant_id": "tenantId"}):
    tenant_id: str
    kid: str
    alg: str
    fingerprint: str


INACTIVE = Introspection(active=False)
TenantQuery = Annotated[str, Parameter(query="tenantId", min_length=1, max_length=200)]


def _counted(endpoint: str, scope: str) -> Callable[[Request[Any, Any, Any]], Awaitable[None]]:
    """A before-request hook: authenticate, then count the call against the tenant's limit
    for `endpoint`, before the body is even parsed, so every answer after authentication
    (a bad body included) carries the rate-limit headers."""

    async def hook(request: Request[Any, Any, Any]) -> None:
        services = services_of(request)
        # This hook replaces the app's, which refuses at once while the database is down.
        services.check_database()
        try:
            principal = await authenticate(request, services, scope, BEARER_ONLY)
        except (AuthenticationError, InsufficientScope, CredentialNotAccepted):
            # Counted, for the headers, but never refused for it: a 401 or 403 tells the
            # caller more than a 429 would.
            request.state["rate_limit"] = await services.rate_limiter.hit(
                UNAUTHORISED_BUCKET, endpoint
            )
            raise
        state = await services.rate_limiter.hit(principal.tenant_id, endpoint)
        request.state["rate_limit"] = state
        if not state.allowed:
            raise RateLimited(state)

    return hook


def _counted_answer(request: Request[Any, Any, Any], response: Response[Any]) -> Response[Any]:
    response.headers.update(rate_limit_headers(request))
    return response


def _tenant(tenant_id: str) -> str:
    if not is_valid_identifier(tenant_id):
        raise BadRequest("tenantId is not a valid tenant id")
    return tenant_id


class IntegrationController(Controller):
    path = "/api/integration"
    tags = ["integration"]
    # A well-formed body of the wrong shape is 422 here, naming the field.
    exception_handlers = {ValidationException: invalid_body}

    @post(
        "/grant",
        operation_id="grantIntegrationToken",
        status_code=201,
        responses=_PROBLEMS,
        before_request=_counted("grant", INTEGRATION_MANAGE),
        security=security_for(BEARER_ONLY),
        description=f"Requires the `{INTEGRATION_MANAGE}` scope; rate limited per tenant.",
        summary="Grant a short-lived integration token for an embed user",
    )
    async def grant(
        self, request: Request[Any, Any, Any], data: GrantRequest
    ) -> Response[GrantIssued]:
        services = services_of(request)
        principal = principal_of(request)
        data = await strict(request, GrantRequest)
        if not is_valid_identifier(data.subject):
            raise InvalidValue("subject", "must be 1-200 characters without whitespace")
        idem = await idempotency(request, principal)
        answer = await in_command_thread(
            services,
            lambda: services.live.grant_integration_token(
                principal, data.subject, data.scopes, data.ttl_seconds, services.now, idem
            )
        )
        return _counted_answer(request, await self._issued(request, answer))

    @post(
        "/verify",
        operation_id="verifyIntegrationToken",
        status_code=200,
        responses=_PROBLEMS,
        before_request=_counted("verify", INTEGRATION_VERIFY),
        security=security_for(BEARER_ONLY),
        description=f"Requires the `{INTEGRATION_VERIFY}` scope; rate limited per tenant.",
        summary="Introspect a token (RFC 7662): active or not, never why",
    )
    async def verify(
        self, request: Request[Any, Any, Any], data: VerifyRequest
    ) -> Response[Introspection]:
        services = services_of(request)
        principal = principal_of(request)
        verified = await services.integration_tokens.verify_async(data.token, principal.tenant_id)
        body = _introspection(verified) if verified is not None else INACTIVE
        response = Response(
            content=body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
        )
        return _counted_answer(request, response)

    @post(
        "/rotate",
        operation_id="rotateIntegrationToken",
        status_code=201,
        responses=_PROBLEMS,
        before_request=_counted("rotate", INTEGRATION_MANAGE),
        security=security_for(BEARER_ONLY),
        description=f"Requires the `{INTEGRATION_MANAGE}` scope; rate limited per tenant.",
        summary="Replace an active token by a new one; the old jti is revoked atomically",
    )
    async def rotate(
        self, request: Request[Any, Any, Any], data: TokenRequest
    ) -> Response[GrantIssued]:
        services = services_of(request)
        principal = principal_of(request)
        idem = await idempotency(request, principal)

        def run() -> Answer:
            # A retry finds the first answer, though that answer revoked the token.
            answered = services.live.answered(idem)
            if answered is not None:
                return answered
            verified = services.integration_tokens.verify(data.token, principal.tenant_id)
            if verified is None:
                raise NotFound("active integration token")
            return services.live.rotate_integration_token(
                principal, verified.claims.jti, services.now, idem
            )

        answer = await in_command_thread(services, run)
        return _counted_answer(request, await self._issued(request, answer))

    @post(
        "/revoke",
        operation_id="revokeIntegrationToken",
        status_code=200,
        responses=_PROBLEMS,
        summary="Revoke a token by token or jti; immediate on every API process",
        **guarded(INTEGRATION_MANAGE, BEARER_ONLY),
    )
    async def revoke(
        self, request: Request[Any, Any, Any], data: RevokeRequest
    ) -> Response[TokenRevoked]:
        services = services_of(request)
        principal = principal_of(request)
        if (data.token is None) == (data.jti is None):
            raise InvalidValue("token", "give exactly one of token and jti")
        idem = await idempotency(request, principal)

        def run() -> Answer:
            jti = data.jti
            if data.token is not None:
                # Revoking an expired token is harmless, so its times are not checked;
                # its signature and tenant are.
                checked = services.integration_tokens.check(data.token, times=False)
                if checked is None or checked.claims.tid != principal.tenant_id:
                    raise NotFound("integration token")
                jti = checked.claims.jti
            assert jti is not None
            return services.live.revoke_integration_token(
                principal, jti, data.reason, services.now, idem
            )

        return respond(await in_command_thread(services, run))

    @post(
        "/revoke-all",
        operation_id="revokeAllIntegrationTokens",
        status_code=200,
        responses=_PROBLEMS,
        summary="Revoke every grant of the tenant issued before an instant",
        **guarded(INTEGRATION_MANAGE, BEARER_ONLY),
    )
    async def revoke_all(
        self, request: Request[Any, Any, Any], data: RevokeAllRequest
    ) -> Response[AllTokensRevoked]:
        services = services_of(request)
        principal = principal_of(request)
        data = await strict(request, RevokeAllRequest)
        if data.issued_before.tzinfo is None:
            raise InvalidValue("issued_before", "must be an RFC 3339 time with an offset")
        idem = await idempotency(request, principal)
        answer = await in_command_thread(
            services,
            lambda: services.live.revoke_all_integration_tokens(
                principal, data.issued_before, services.now, idem
            )
        )
        return respond(answer)

    @post(
        "/keys/rotate",
        operation_id="rotateSigningKey",
        status_code=200,
        responses=_PROBLEMS,
        summary="Make a new signing key current; the old one stays published until its "
        "tokens have expired",
        **guarded(INTEGRATION_MANAGE, BEARER_ONLY),
    )
    async def rotate_key(self, request: Request[Any, Any, Any]) -> Response[SigningKeyRotated]:
        services = services_of(request)
        principal = principal_of(request)
        if (await request.body()).strip():
            await strict(request, RotateKeyRequest)
        idem = await idempotency(request, principal)
        answer = await in_command_thread(
            services,
            lambda: services.live.rotate_signing_key(principal, services.now, idem)
        )
        return respond(answer)

    @get(
        "/jwks",
        operation_id="integrationJwks",
        responses={400: _PROBLEMS[400], 503: _PROBLEMS[503]},
        summary="The tenant's public signing keys (JWK Set)",
    )
    async def jwks(self, request: Request[Any, Any, Any], tenant_id: TenantQuery) -> Response[Jwks]:
        services = services_of(request)
        tenant = _tenant(tenant_id)
        keys = await in_thread(
            lambda: services.integration_store.published_keys(tenant, services.now())
        )
        return Response(
            Jwks(keys=keys),
            headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE_SECONDS}"},
        )

    @get(
        "/fingerprint",
        operation_id="integrationKeyFingerprint",
        responses={400: _PROBLEMS[400], 404: _PROBLEMS[404], 503: _PROBLEMS[503]},
        summary="RFC 7638 SHA-256 thumbprint of the tenant's current signing key",
    )
    async def fingerprint(
        self, request: Request[Any, Any, Any], tenant_id: TenantQuery
    ) -> Response[Fingerprint]:
        services = services_of(request)
        tenant = _tenant(tenant_id)
        jwk = await in_thread(lambda: services.integration_store.current_key(tenant))
        if jwk is None:
            raise NotFound("signing key")
        body = Fingerprint(
            tenant_id=tenant,
            kid=jwk["kid"],
            alg=jwk["alg"],
            fingerprint=jwk_thumbprint(key_from_jwk(jwk).key),
        )
        return Response(
            body, headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE_SECONDS}"}
        )

    @staticmethod
    async def _issued(request: Request[Any, Any, Any], answer: Answer) -> Response[Any]:
        """The grant's answer with its token, signed from the recorded claims (a replayed
        answer signs to the same token: Ed25519 signatures are deterministic)."""
        services = services_of(request)
        recorded = msgspec.json.decode(answer.body, type=GrantRecorded)
        token = await in_thread(lambda: services.token_signer.sign(recorded.claims, recorded.kid))
        issued = GrantIssued(
            token=token,
            token_type=BEARER,
            jti=recorded.jti,
            kid=recorded.kid,
            expires_at=recorded.expires_at,
            expires_in=recorded.expires_in,
        )
        response = respond(Answer(answer.status, msgspec.json.encode(issued), answer.position))
        response.headers["Cache-Control"] = "no-store"
        return response


def end_if_token_revoked(services: Services, principal: Principal, answer: Answer) -> None:
    """After a session start with an integration token: a revoke that swept the token's
    sessions just before this one was saved has not ended it, so look once more now that
    it is saved (the reaper is the last backstop)."""
    if answer.status != 201 or principal.credential_id is None:
        return
    status = services.integration_store.grant_status(principal.credential_id)
    if status is None or not status.active:
        session_id = UUID(msgspec.json.decode(answer.body)["session_id"])
        services.live.end_for(session_id, "token_revoked", services.now)


def _introspection(verified: VerifiedToken) -> Introspection:
    c = verified.claims
    return Introspection(
        active=True,
        sub=c.sub,
        tid=c.tid,
        scope=c.scope,
        jti=c.jti,
        kid=verified.kid,
        iat=c.iat,
        nbf=c.nbf,
        exp=c.exp,
        iss=c.iss,
        aud=c.aud,
        token_type=BEARER,
    )
