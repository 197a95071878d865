"""Who is calling: one function that turns request headers into a Principal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any

from litestar import Request
from litestar.openapi.spec import Reference, SecurityRequirement, SecurityScheme

from adapters.auth.api_keys import has_valid_shape, hash_api_key
from adapters.auth.errors import (
    AuthenticationError,
    CredentialNotAccepted,
    InsufficientScope,
    MissingCredentials,
)
from adapters.auth.scopes import parse_scope
from adapters.eventstore.recorder import API_KEY_OWNER
from adapters.http.middleware import header_value
from adapters.http.services import Services
from adapters.integration.tokens import is_integration_token
from application.principal import CredentialKind, Principal

# Where authentication leaves the caller, in the request's scope state (for the hook that
# remembers each caller's last command, adapters/http/commands.py).
PRINCIPAL_STATE = "xentree.principal"

ALL: tuple[CredentialKind, ...] = ("bearer", "api_key", "integration", "service")
NOT_API_KEY: tuple[CredentialKind, ...] = ("bearer", "integration", "service")
BEARER_ONLY: tuple[CredentialKind, ...] = ("bearer",)


async def authenticate(
    request: Request[Any, Any, Any],
    services: Services,
    scope: str,
    accept: Collection[CredentialKind] = ALL,
) -> Principal:
    """The caller, if their credential is valid and holds `scope` (reads of the database
    that a credential needs run on the event loop, never blocking it)."""
    principal = await _identify(request, services)
    if principal.credential not in accept:
        raise CredentialNotAccepted(principal.credential)
    if not principal.has_scope(scope):
        raise InsufficientScope(scope)
    request.scope.setdefault("state", {})[PRINCIPAL_STATE] = principal
    return principal


# The OpenAPI security schemes, one per way of presenting a credential (an integration
# token is a bearer token); the service flow needs both of its headers.
SECURITY_SCHEMES: dict[str, SecurityScheme | Reference] = {
    "bearer": SecurityScheme(
        type="http", scheme="bearer", bearer_format="JWT",
        description="A user access token of the identity provider, or an integration token",
    ),
    "apiKey": SecurityScheme(type="apiKey", name="X-API-Key", security_scheme_in="header"),
    "serviceKey": SecurityScheme(
        type="apiKey", name="X-Service-Key", security_scheme_in="header",
        description="Internal services only, with X-On-Behalf-Of",
    ),
    "onBehalfOf": SecurityScheme(
        type="apiKey", name="X-On-Behalf-Of", security_scheme_in="header",
        description="`tenant_id/user_id` of the user a service acts for",
    ),
}
_REQUIREMENTS: dict[CredentialKind, SecurityRequirement] = {
    "bearer": {"bearer": []},
    "integration": {"bearer": []},
    "api_key": {"apiKey": []},
    "service": {"serviceKey": [], "onBehalfOf": []},
}


def security_for(accept: Collection[CredentialKind]) -> list[SecurityRequirement]:
    """The OpenAPI security requirements of a route taking these kinds of credential."""
    requirements: list[SecurityRequirement] = []
    for kind in accept:
        if _REQUIREMENTS[kind] not in requirements:
            requirements.append(_REQUIREMENTS[kind])
    return requirements


def requires(
    scope: str, accept: Collection[CredentialKind] = ALL
) -> Callable[[Request[Any, Any, Any]], Awaitable[None]]:
    """A route's before-request hook: the caller must hold `scope` with a credential of a
    kind in `accept`. It runs before the body and the query are parsed, so a caller without
    a valid credential hears 401 (or 403) whatever else is wrong with the request. It takes
    the place of the app's hook, so it also refuses at once while the database is down."""

    async def hook(request: Request[Any, Any, Any]) -> None:
        services: Services = request.app.state.services
        services.check_database()
        await authenticate(request, services, scope, accept)

    return hook


def guarded(scope: str, accept: Collection[CredentialKind] = ALL) -> dict[str, Any]:
    """A route decorator's arguments for a guarded route: the `requires` hook, and the
    same credentials declared in the OpenAPI document (with the scope in words)."""
    return {
        "before_request": requires(scope, accept),
        "security": security_for(accept),
        "description": f"Requires the `{scope}` scope.",
    }


def principal_of(request: Request[Any, Any, Any]) -> Principal:
    """The caller a route's `requires` hook authenticated."""
    principal: Principal = request.scope["state"][PRINCIPAL_STATE]
    return principal


async def _identify(request: Request[Any, Any, Any], services: Services) -> Principal:
    scope = request.scope
    authorization = header_value(scope, b"authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("the Authorization header must be 'Bearer <token>'")
        token = token.strip()
        # Only user access tokens are kept in the verified cache; one found there needs no
        # routing (integration tokens are checked against revocation on every request).
        cached = services.bearer.cached(token)
        if cached is not None:
            return cached
        # Both kinds are JWTs; the header's typ says which verifier may judge it, and each
        # refuses the other's typ, so neither can be passed off as the other.
        if is_integration_token(token):
            return await services.integration_tokens.authenticate_async(token)
        return services.bearer.verify(token)
    api_key = header_value(scope, b"x-api-key")
    if api_key is not None:
        return await _api_key(api_key.strip(), services)
    service_key = header_value(scope, b"x-service-key")
    if service_key is not None:
        return services.service_keys.authenticate(
            service_key, header_value(scope, b"x-on-behalf-of") or ""
        )
    raise MissingCredentials()


async def _api_key(key: str, services: Services) -> Principal:
    # The checksum refuses typos and junk without a database read.
    if not has_valid_shape(key):
        raise AuthenticationError("invalid API key")
    async with services.aread() as conn:
        cur = await conn.execute(API_KEY_OWNER, (hash_api_key(key, services.pepper),))
        found = await cur.fetchone()
    if found is None:
        raise AuthenticationError("invalid API key")
    key_id, tenant_id, user_id, scopes = (
        found["key_id"], found["tenant_id"], found["user_id"], found["scopes"]
    )
    return Principal(
        tenant_id=tenant_id,
        user_id=user_id,
        scopes=parse_scope(scopes, allow_unknown=True),
        credential="api_key",
        credential_id=key_id,
    )
