"""API keys: issued to a bearer-authenticated user, shown once, stored as a hash."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post

from adapters.auth.api_keys import (
    MAX_NAME_LENGTH,
    check_key_request,
    generate_api_key,
    hash_api_key,
)
from adapters.auth.scopes import LIVE_READ, LIVE_WRITE
from adapters.http.auth import BEARER_ONLY, guarded, principal_of
from adapters.http.commands import idempotency, in_command_thread, in_thread, respond, services_of
from adapters.http.schemas import KEY_PROBLEMS
from application.results import ApiKeyInfo, ApiKeyIssued


class CreateKey(msgspec.Struct, forbid_unknown_fields=True):
    scopes: Annotated[list[str], msgspec.Meta(min_length=1, max_length=8)]
    name: Annotated[str, msgspec.Meta(max_length=MAX_NAME_LENGTH)] = ""


class KeyList(msgspec.Struct):
    items: list[ApiKeyInfo]


class ApiKeyController(Controller):
    path = "/api/live/api-keys"
    tags = ["api-keys"]

    @post("/", operation_id="createApiKey", status_code=201, responses=KEY_PROBLEMS,
          **guarded(LIVE_WRITE, BEARER_ONLY))
    async def create(
        self, request: Request[Any, Any, Any], data: CreateKey
    ) -> Response[ApiKeyIssued]:
        services = services_of(request)
        principal = principal_of(request)
        scopes = frozenset(data.scopes)
        check_key_request(scopes, principal.scopes, data.name)
        idem = await idempotency(request, principal)
        key_id, key = generate_api_key()
        key_hash = hash_api_key(key, services.pepper)
        answer = await in_command_thread(
            services,
            lambda: services.live.issue_api_key(
                principal, key_id, key_hash, data.name, sorted(scopes), services.now, idem
            )
        )
        info = msgspec.json.decode(answer.body)
        if info["key_id"] == key_id:
            # The secret is shown once: in this answer only, never stored or replayed.
            issued = msgspec.json.encode({**info, "key": key})
            answer = type(answer)(answer.status, issued, answer.position)
        else:
            answer = type(answer)(
                answer.status, msgspec.json.encode({**info, "key": None}), answer.position
            )
        return respond(answer)

    @get("/", operation_id="listApiKeys", responses=KEY_PROBLEMS,
         **guarded(LIVE_READ, BEARER_ONLY))
    async def list_keys(self, request: Request[Any, Any, Any]) -> KeyList:
        services = services_of(request)
        principal = principal_of(request)
        rows = await in_thread(
            lambda: services.recorder.api_keys_of(principal.tenant_id, principal.user_id)
        )
        return KeyList(
            items=[
                ApiKeyInfo(
                    key_id=r["key_id"],
                    name=r["name"],
                    scopes=r["scopes"].split(),
                    created_at=r["created_at"],
                    revoked_at=r["revoked_at"],
                )
                for r in rows
            ]
        )

    @delete(
        "/{key_id:str}", operation_id="revokeApiKey", status_code=200, responses=KEY_PROBLEMS,
        **guarded(LIVE_WRITE, BEARER_ONLY),
    )
    async def revoke(self, request: Request[Any, Any, Any], key_id: str) -> Response[ApiKeyInfo]:
        services = services_of(request)
        principal = principal_of(request)
        answer = await in_command_thread(
            services,
            lambda: services.live.revoke_api_key(principal, key_id, services.now)
        )
        return respond(answer)
