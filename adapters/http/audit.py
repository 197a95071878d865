"""The audit API: the stored history as CloudEvents (paginated by position), a user's read
models replayed at an instant, and the JSON Schema of every event type (public, at
/schema/events/ beside the OpenAPI document and at /api/events/schema).

Audit reads need `audit:read` and are bounded to the caller's tenant, except for callers of
the configured platform tenant (XENTREE_AUDIT_PLATFORM_TENANT), who may read every tenant.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get
from litestar.params import Parameter

from adapters.audit import event_schemas
from adapters.audit.history import History, Selection, head
from adapters.audit.replay import replay
from adapters.auth.scopes import AUDIT_READ
from adapters.http.auth import guarded, principal_of
from adapters.http.commands import in_thread, services_of
from adapters.http.problems import BadRequest
from adapters.http.schemas import READ_PROBLEMS
from adapters.http.services import Services
from adapters.relay.envelope import Envelope
from application.principal import Principal
from domain.errors import NotFound

MAX_PAGE = 1000
schemas = functools.cache(event_schemas.schemas)
# Events looked at per request when a filter matches few: the page ends early and
# `next_after` says where to continue, so no request scans the whole history.
SCAN_PER_PAGE = 20_000
_encoder = msgspec.json.Encoder()


class AuditPage(msgspec.Struct):
    events: list[Envelope]
    next_after: int
    head: int
    more: bool


def _bounds(since: datetime | None, until: datetime | None) -> None:
    """Instants, not wall-clock readings of some unknown zone, and in order."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise BadRequest(f"{name} must be an instant with a UTC offset, e.g. ...Z")
    if since is not None and until is not None and since > until:
        raise BadRequest("since is later than until: no event could be in between")


def _tenant(principal: Principal, services: Services, wanted: str | None) -> str | None:
    """The tenant this caller may read: their own, or any for a platform auditor."""
    platform = services.settings.audit_platform_tenant
    if platform and principal.tenant_id == platform:
        return wanted
    if wanted is not None and wanted != principal.tenant_id:
        # Another tenant's history does not exist for this caller (SPEC section 1: 404,
        # never 403, so existence does not leak).
        raise NotFound("tenant")
    return principal.tenant_id


class AuditController(Controller):
    path = "/api/audit"
    tags = ["audit"]

    @get(
        "/events",
        operation_id="exportAuditEvents",
        responses=READ_PROBLEMS,
        summary="Stored events as CloudEvents envelopes, in position order",
        **guarded(AUDIT_READ),
    )
    async def events(
        self,
        request: Request[Any, Any, Any],
        after: Annotated[int, Parameter(ge=0)] = 0,
        limit: Annotated[int, Parameter(ge=1, le=MAX_PAGE)] = 100,
        tenant: Annotated[str | None, Parameter(max_length=200)] = None,
        user: Annotated[str | None, Parameter(max_length=200)] = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> AuditPage:
        services = services_of(request)
        principal = principal_of(request)
        _bounds(since, until)
        selection = Selection(
            tenant=_tenant(principal, services, tenant), user=user, since=since, until=until
        )

        def read() -> AuditPage:
            with services.read() as conn:
                history = History(conn, services.live.mapper)
                found, last = history.select(selection, after, limit, SCAN_PER_PAGE)
                top = head(conn)
            return AuditPage(events=found, next_after=last, head=top, more=last < top)

        return await in_thread(read)

    @get(
        "/replay",
        operation_id="replayAudit",
        responses=READ_PROBLEMS,
        summary="A user's read models (quota, sessions, ...) as they stood at `until`",
        **guarded(AUDIT_READ),
    )
    async def replay(
        self,
        request: Request[Any, Any, Any],
        user: Annotated[str, Parameter(min_length=1, max_length=200)],
        until: datetime,
        tenant: Annotated[str | None, Parameter(max_length=200)] = None,
    ) -> Response[bytes]:
        services = services_of(request)
        principal = principal_of(request)
        owner = _tenant(principal, services, tenant) or principal.tenant_id
        _bounds(None, until)

        def read() -> bytes:
            with services.read() as conn:
                return _encoder.encode(
                    replay(History(conn, services.live.mapper), owner, user, until)
                )

        return Response(await in_thread(read), media_type="application/json")


def _event_schema(event_type: str) -> dict[str, Any]:
    # Also by the file name of docs/events/ (`<type>.json`).
    found = schemas().get(event_type.removesuffix(".json"))
    if found is None:
        raise NotFound(f"event type {event_type!r}")
    return found


class EventSchemaController(Controller):
    path = "/api/events/schema"
    tags = ["events"]

    @get("/", operation_id="listEventSchemas", summary="JSON Schema of every event type")
    async def all_schemas(self) -> dict[str, Any]:
        return schemas()

    @get(
        "/{event_type:str}",
        operation_id="getEventSchema",
        responses=READ_PROBLEMS,
        summary="JSON Schema of one event type, e.g. xentree.live.LiveSession.Started",
    )
    async def one_schema(self, event_type: str) -> dict[str, Any]:
        return _event_schema(event_type)


class PublishedSchemaController(Controller):
    """The same schemas beside the OpenAPI document (/schema), where the published ones
    are looked for; this path wins over the OpenAPI router's catch-all below /schema."""

    path = "/schema/events"
    tags = ["events"]

    @get("/", operation_id="listPublishedEventSchemas",
         summary="JSON Schema of every event type (as /api/events/schema)")
    async def all_schemas(self) -> dict[str, Any]:
        return schemas()

    @get(
        "/{event_type:str}",
        operation_id="getPublishedEventSchema",
        responses=READ_PROBLEMS,
        summary="JSON Schema of one event type, e.g. xentree.live.LiveSession.Started[.json]",
    )
    async def one_schema(self, event_type: str) -> dict[str, Any]:
        return _event_schema(event_type)
