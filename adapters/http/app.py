"""The app factory: one place that wires the API together."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response, Router
from litestar.exceptions import NotFoundException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components

from adapters.http.api_keys import ApiKeyController
from adapters.http.audit import (
    AuditController,
    EventSchemaController,
    PublishedSchemaController,
)
from adapters.http.auth import SECURITY_SCHEMES
from adapters.http.commands import remember_writes
from adapters.http.demo import DemoController
from adapters.http.health import HealthController
from adapters.http.integration import IntegrationController
from adapters.http.middleware import serve_http
from adapters.http.problems import exception_handlers
from adapters.http.profile import ProfileController
from adapters.http.quota import QuotaController
from adapters.http.services import Services, build_services
from adapters.http.sessions import SessionController
from adapters.http.transcripts import TranscriptController
from application.settings import Settings, load_settings


def create_app(settings: Settings | None = None, services: Services | None = None) -> Litestar:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        owned = services is None
        # The threads of blocking work other than commands (which have their own, made by
        # the services' start); the pools bound the database connections (README "Tuning").
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=settings.api_threads, thread_name_prefix="xentree-api")
        )
        app.state.services = services or build_services(settings)
        await app.state.services.start()
        # Everything built so far lives as long as the process: out of the collector's
        # sight, so a full collection scans only what requests create (its pauses were
        # most of the heartbeat's p99 at moderate load).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await app.state.services.stop()
            if owned:
                app.state.services.close()

    return Api(
        route_handlers=[SessionController, QuotaController, ApiKeyController, HealthController,
                        IntegrationController,
                        ProfileController, TranscriptController,
                        AuditController, EventSchemaController, PublishedSchemaController,
                        DemoController],
        lifespan=[lifespan],
        before_request=refuse_while_database_down,
        exception_handlers=exception_handlers(),
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Xentree Live",
            version="0.1.0",
            components=Components(security_schemes=SECURITY_SCHEMES),
            path="/schema",
            render_plugins=[SwaggerRenderPlugin(), ScalarRenderPlugin(path="/scalar")],
            openapi_router=Router(
                "/schema", route_handlers=[], include_in_schema=False,
                after_request=schema_page_not_found,
            ),
        ),
        debug=False,
    )


OPERATIONS = ("/healthz", "/readyz", "/metrics", "/schema")


async def schema_page_not_found(response: Response[Any]) -> Response[Any]:
    """Litestar answers an unknown page under /schema with an HTML 404 of its own: make it
    the same problem answer as every other unknown route."""
    if response.status_code == 404:
        raise NotFoundException()
    return response


class Api(Litestar):
    """The Litestar app with what every HTTP answer gets (request id, security headers,
    metrics, a command's position remembered for its caller's next read) in one layer
    around it (adapters/http/middleware.py), rather than a middleware and a hook."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        await serve_http(super().__call__, scope, receive, send, remember_writes)


async def refuse_while_database_down(request: Request[Any, Any, Any]) -> None:
    """503 at once while PostgreSQL is known to be down, rather than a request that waits
    out every pool timeout and retry below (operations endpoints still answer)."""
    if not request.url.path.startswith(OPERATIONS):
        request.app.state.services.check_database()


def app_from_env() -> Litestar:
    """Uvicorn factory entry point (`adapters.http.app:app_from_env`)."""

    return create_app(load_settings())
