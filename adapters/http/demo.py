"""A demo page a person can use (GET /demo) and the local dev endpoint that hands it an
integration token (POST /api/dev/integration-token).

Both exist only while the dev issuer is enabled (`settings.dev_issuer`, local runs and
tests): otherwise they answer 404, as if absent. Neither is in the OpenAPI schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import msgspec
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.exceptions import NotFoundException

from adapters.auth.identifiers import MAX_IDENTIFIER_LENGTH, is_valid_identifier
from adapters.auth.scopes import LIVE_READ, LIVE_WRITE
from adapters.http.commands import in_command_thread, services_of
from adapters.http.integration import GrantIssued, IntegrationController
from application.principal import Principal
from domain.errors import InvalidValue
from domain.integration import MAX_TTL_SECONDS

DEMO_PAGE = Path(__file__).parent / "static" / "demo.html"
CONFIG_PLACEHOLDER = "/*__XENTREE_DEMO_CONFIG__*/{}"
# The granter recorded on dev grants (the audit trail shows where the token came from).
DEV_GRANTER = "dev-issuer"

Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_IDENTIFIER_LENGTH)]


class DevTokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    tenant: Identifier
    user: Identifier


def _require_dev_issuer(request: Request[Any, Any, Any]) -> None:
    if not services_of(request).settings.dev_issuer:
        raise NotFoundException()


def page_config(realtime_url: str) -> str:
    """The page's config as a JSON literal that is safe inside a <script> element."""
    text = json.dumps({"realtime_url": realtime_url})
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class DemoController(Controller):
    include_in_schema = False

    @get(
        "/demo",
        media_type=MediaType.HTML,
        include_in_schema=False,
        before_request=_require_dev_issuer,
    )
    async def demo(self, request: Request[Any, Any, Any]) -> Response[str]:
        settings = services_of(request).settings
        html = DEMO_PAGE.read_text(encoding="utf-8")
        html = html.replace(CONFIG_PLACEHOLDER, page_config(settings.realtime_url), 1)
        return Response(html, media_type=MediaType.HTML, headers={"Cache-Control": "no-store"})

    @post(
        "/api/dev/integration-token",
        status_code=201,
        include_in_schema=False,
        before_request=_require_dev_issuer,
    )
    async def integration_token(
        self, request: Request[Any, Any, Any], data: DevTokenRequest
    ) -> Response[GrantIssued]:
        """A short-lived live:read live:write integration token for a dev user, granted by
        the application's own grant use case (recorded and revocable like any other)."""
        services = services_of(request)
        if not is_valid_identifier(data.tenant):
            raise InvalidValue("tenant", "must be 1-200 characters without whitespace")
        if not is_valid_identifier(data.user):
            raise InvalidValue("user", "must be 1-200 characters without whitespace")
        granter = Principal(
            tenant_id=data.tenant,
            user_id=DEV_GRANTER,
            scopes=frozenset({LIVE_READ, LIVE_WRITE}),
            credential="bearer",
        )
        answer = await in_command_thread(
            services,
            lambda: services.live.grant_integration_token(
                granter, data.user, [LIVE_READ, LIVE_WRITE], MAX_TTL_SECONDS, services.now
            )
        )
        return await IntegrationController._issued(request, answer)
