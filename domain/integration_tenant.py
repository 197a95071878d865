"""A tenant's integration settings: which signing key is current, and the revoke-all
cut-off (every grant issued before it is revoked, as LiveKit's `revokeTokenTs`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain import ids
from domain.errors import InvalidValue

# A cut-off this far ahead of the server's clock is the caller's clock running fast, and is
# taken as "now"; further ahead is refused: the future cannot be revoked in advance.
CLOCK_SKEW_SECONDS = 5


class IntegrationTenant(Aggregate):
    @staticmethod
    def create_id(tenant_id: str) -> UUID:
        return ids.integration_tenant_id(tenant_id)

    @event("Registered")
    def __init__(self, *, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.current_kid: str | None = None
        self.revoked_before: datetime | None = None

    def activate_key(self, kid: str, at: datetime) -> None:
        self._key_activated(kid=kid, previous_kid=self.current_kid, activated_at=at)

    @event("KeyActivated")
    def _key_activated(self, *, kid: str, previous_kid: str | None, activated_at: datetime) -> None:
        self.current_kid = kid

    def revoke_all(self, issued_before: datetime, now: datetime) -> None:
        """Raise the cut-off to `issued_before` (never lower it: an earlier cut-off is
        already covered), or to `now` when the caller's clock is a little ahead."""
        if issued_before > now + timedelta(seconds=CLOCK_SKEW_SECONDS):
            raise InvalidValue("issued_before", "must not be in the future")
        issued_before = min(issued_before, now)
        if self.revoked_before is None or issued_before > self.revoked_before:
            self._all_revoked(issued_before=issued_before, revoked_at=now)

    @event("AllRevoked")
    def _all_revoked(self, *, issued_before: datetime, revoked_at: datetime) -> None:
        self.revoked_before = issued_before
