"""A tenant's token signing key. Only its public half is ever in an event: the private key
is sealed by the key vault adapter and stored beside the event, never in it."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain import ids


class SigningKey(Aggregate):
    @staticmethod
    def create_id(kid: str) -> UUID:
        return ids.signing_key_id(kid)

    @event("Created")
    def __init__(
        self,
        *,
        kid: str,
        tenant_id: str,
        algorithm: str,
        public_jwk: dict[str, str],
        created_at: datetime,
    ) -> None:
        self.kid = kid
        self.tenant_id = tenant_id
        self.algorithm = algorithm
        self.public_jwk = public_jwk
        self.created_at = created_at
        self.published_until: datetime | None = None
        self.retired_at: datetime | None = None

    def supersede(self, at: datetime, published_until: datetime) -> None:
        """A newer key signs from now on; this one verifies until `published_until`."""
        if self.published_until is None and self.retired_at is None:
            self._superseded(superseded_at=at, published_until=published_until)

    @event("Superseded")
    def _superseded(self, *, superseded_at: datetime, published_until: datetime) -> None:
        self.published_until = published_until

    def due_for_retirement(self, now: datetime) -> bool:
        return (
            self.retired_at is None
            and self.published_until is not None
            and self.published_until <= now
        )

    def retire(self, at: datetime) -> None:
        if self.due_for_retirement(at):
            self._retired(retired_at=at)

    @event("Retired")
    def _retired(self, *, retired_at: datetime) -> None:
        self.retired_at = retired_at
