"""Who is calling: the outcome of authentication, handed to every use case."""

from __future__ import annotations

from typing import Literal

import msgspec

CredentialKind = Literal["bearer", "api_key", "integration", "service"]

ALL_USER_SCOPES: frozenset[str] = frozenset({"live:read", "live:write"})


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    user_id: str
    scopes: frozenset[str]
    credential: CredentialKind
    # The id of the credential itself (API key id, integration token jti), when it has one.
    credential_id: str | None = None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes
