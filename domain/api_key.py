"""An API key issued to a user: only its hash is ever stored."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain import ids


class ApiKey(Aggregate):
    @staticmethod
    def create_id(key_id: str) -> UUID:
        return ids.api_key_id(key_id)

    @event("Issued")
    def __init__(
        self,
        *,
        key_id: str,
        tenant_id: str,
        user_id: str,
        key_hash: str,
        scopes: list[str],
        name: str,
        issued_at: datetime,
    ) -> None:
        self.key_id = key_id
        self.tenant_id = tenant_id
        self.user_id = user_id
        self.key_hash = key_hash
        self.scopes = scopes
        self.name = name
        self.issued_at = issued_at
        self.revoked_at: datetime | None = None

    def revoke(self, at: datetime) -> None:
        if self.revoked_at is None:
            self._revoked(revoked_at=at)

    @event("Revoked")
    def _revoked(self, *, revoked_at: datetime) -> None:
        self.revoked_at = revoked_at
