"""An integration token grant: issued once, then maybe revoked or rotated into a new one.
The token itself is never recorded, only what it says."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain import ids


class IntegrationGrant(Aggregate):
    @staticmethod
    def create_id(jti: str) -> UUID:
        return ids.integration_grant_id(jti)

    @event("Granted")
    def __init__(
        self,
        *,
        jti: str,
        tenant_id: str,
        subject: str,
        scopes: list[str],
        kid: str,
        issued_at: datetime,
        expires_at: datetime,
        granted_by: str,
        rotated_from: str | None,
    ) -> None:
        self.jti = jti
        self.tenant_id = tenant_id
        self.subject = subject
        self.scopes = scopes
        self.kid = kid
        self.issued_at = issued_at
        self.expires_at = expires_at
        self.granted_by = granted_by
        self.rotated_from = rotated_from
        self.revoked_at: datetime | None = None
        self.rotated_to: str | None = None

    @property
    def ttl_seconds(self) -> int:
        """The lifetime a token of this grant carries (exp - iat, whole seconds)."""
        return int(self.expires_at.timestamp()) - int(self.issued_at.timestamp())

    def is_live(self, now: datetime) -> bool:
        return self.revoked_at is None and now < self.expires_at

    def revoke(self, at: datetime, reason: str) -> None:
        """Idempotent: a second revoke keeps the first time."""
        if self.revoked_at is None:
            self._revoked(revoked_at=at, reason=reason)

    @event("Revoked")
    def _revoked(self, *, revoked_at: datetime, reason: str) -> None:
        self.revoked_at = revoked_at

    def rotate(self, at: datetime, successor_jti: str) -> None:
        """Replaced by `successor_jti`: this grant is revoked by the same event."""
        self._rotated(rotated_at=at, successor_jti=successor_jti)

    @event("Rotated")
    def _rotated(self, *, rotated_at: datetime, successor_jti: str) -> None:
        self.revoked_at = rotated_at
        self.rotated_to = successor_jti
