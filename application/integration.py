"""Integration-token use cases (SPEC section 5): grant, rotate, revoke, revoke-all, and
signing-key rotation. A mixin of `LiveApplication`, so every command shares its one event
store, notification log and `command` loop (optimistic concurrency, idempotency).

Signing and verifying tokens are adapter work: these use cases decide what a token says
(its claims and signing key) and record it; the HTTP adapter signs the answer's claims. The
answer holds no token, so a stored idempotent answer holds no credential either; Ed25519
signatures are deterministic, so signing the replayed claims gives back the same token.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol, TypeVar, cast
from uuid import UUID

import msgspec
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate

from application.idempotency import IdempotencyRequest
from application.principal import Principal
from application.results import Answer
from application.settings import Settings
from domain.errors import NotFound
from domain.ids import integration_grant_id, integration_tenant_id, signing_key_id
from domain.integration import (
    TokenClaims,
    check_grant,
    check_revoke_reason,
    published_until,
    token_claims,
)
from domain.integration_grant import IntegrationGrant
from domain.integration_tenant import IntegrationTenant
from domain.signing_key import SigningKey

if TYPE_CHECKING:
    from application.live import Decision
    from domain.billing import EndReason

A = TypeVar("A", bound=Aggregate)

SIGNING_ALGORITHM = "EdDSA"


# ---- ports --------------------------------------------------------------------------


class GeneratedKey(msgspec.Struct, frozen=True, kw_only=True):
    """A new key pair: its public JWK and kid. The private half is already sealed and
    stored by the vault under `kid`; it never passes through here."""

    kid: str
    public_jwk: dict[str, str]


class KeyVault(Protocol):
    def generate(self, tenant_id: str) -> GeneratedKey:
        """Create a key pair and store its private half encrypted at rest."""
        ...


class IntegrationIndex(Protocol):
    """Write-side indexes, committed with the events (the event store's recorder)."""

    def superseded_keys(self, tenant_id: str) -> list[str]:
        """Kids of the tenant's superseded keys that are not retired yet."""
        ...

    def sessions_started_with(self, jti: str) -> list[UUID]:
        """Active sessions started with the integration token `jti`."""
        ...

    def sessions_of_grants_before(self, tenant_id: str, cutoff: datetime) -> list[UUID]:
        """Active sessions started with the tenant's tokens granted before `cutoff`."""
        ...


# ---- answers ------------------------------------------------------------------------


class GrantRecorded(msgspec.Struct, kw_only=True):
    """A recorded grant: what its token says and which key signs it."""

    jti: str
    kid: str
    claims: TokenClaims
    expires_at: datetime
    expires_in: int


class TokenRevoked(msgspec.Struct, kw_only=True):
    jti: str
    revoked_at: datetime


class AllTokensRevoked(msgspec.Struct, kw_only=True):
    tenant_id: str
    issued_before: datetime


class SigningKeyRotated(msgspec.Struct, kw_only=True):
    kid: str
    previous_kid: str | None
    previous_published_until: datetime | None


# ---- use cases ----------------------------------------------------------------------


class IntegrationUseCases:
    settings: Settings
    key_vault: KeyVault | None = None

    if TYPE_CHECKING:

        def load(self, cls: type[A], aggregate_id: UUID) -> A | None: ...

        def command(
            self, decide: Callable[[], Decision], idem: IdempotencyRequest | None
        ) -> Answer: ...

        def end_for(
            self, session_id: UUID, reason: EndReason, now: Callable[[], datetime]
        ) -> bool: ...

    @property
    def integration_index(self) -> IntegrationIndex:
        # The event store's recorder keeps these indexes, in the events' transactions.
        app = cast("Application[UUID]", self)
        return cast(IntegrationIndex, app.recorder)

    def _vault(self) -> KeyVault:
        if self.key_vault is None:
            raise RuntimeError("no key vault is wired into the application")
        return self.key_vault

    def grant_integration_token(
        self,
        principal: Principal,
        subject: str,
        scopes: list[str],
        ttl_seconds: int,
        now: Callable[[], datetime],
        idem: IdempotencyRequest | None = None,
    ) -> Answer:
        granted_scopes = check_grant(scopes, ttl_seconds, principal.scopes)

        def decide() -> Decision:
            at = now()
            tenant, keys = self._tenant_with_key(principal.tenant_id, at)
            grant = self._new_grant(
                tenant, subject, granted_scopes, ttl_seconds, at, principal, rotated_from=None
            )
            return (tenant, *keys, grant), 201, self._recorded(grant)

        return self.command(decide, idem)

    def rotate_integration_token(
        self,
        principal: Principal,
        jti: str,
        now: Callable[[], datetime],
        idem: IdempotencyRequest | None = None,
    ) -> Answer:
        """Replace a live grant by a new one for the same subject and scopes; the old jti
        is revoked by the same atomic write that records the new grant."""

        def decide() -> Decision:
            at = now()
            old = self._tenant_grant(principal, jti)
            if not old.is_live(at):
                raise NotFound("active integration token")
            tenant, keys = self._tenant_with_key(principal.tenant_id, at)
            new = self._new_grant(
                tenant, old.subject, list(old.scopes), old.ttl_seconds, at, principal,
                rotated_from=old.jti,
            )
            old.rotate(at, new.jti)
            return (tenant, *keys, old, new), 201, self._recorded(new)

        return self.command(decide, idem)

    def revoke_integration_token(
        self,
        principal: Principal,
        jti: str,
        reason: str | None,
        now: Callable[[], datetime],
        idem: IdempotencyRequest | None = None,
    ) -> Answer:
        """Revoke one grant. The write-side revocation row commits with the event, and
        verify reads it, so once this returns no verify anywhere accepts the jti; the
        sessions the token started are ended before the answer too."""
        recorded_reason = check_revoke_reason(reason)

        def decide() -> Decision:
            grant = self._tenant_grant(principal, jti)
            grant.revoke(now(), recorded_reason)
            assert grant.revoked_at is not None
            return (grant,), 200, TokenRevoked(jti=grant.jti, revoked_at=grant.revoked_at)

        answer = self.command(decide, idem)
        for session_id in self.integration_index.sessions_started_with(jti):
            self.end_for(session_id, "token_revoked", now)
        return answer

    def revoke_all_integration_tokens(
        self,
        principal: Principal,
        issued_before: datetime,
        now: Callable[[], datetime],
        idem: IdempotencyRequest | None = None,
    ) -> Answer:
        """The emergency switch: every grant of the tenant issued before the instant."""
        tenant_id = principal.tenant_id

        def decide() -> Decision:
            tenant = self.load(IntegrationTenant, integration_tenant_id(tenant_id))
            tenant = tenant or IntegrationTenant(tenant_id=tenant_id)
            tenant.revoke_all(issued_before, now())
            assert tenant.revoked_before is not None
            result = AllTokensRevoked(tenant_id=tenant_id, issued_before=tenant.revoked_before)
            return (tenant,), 200, result

        answer = self.command(decide, idem)
        cutoff = msgspec.json.decode(answer.body, type=AllTokensRevoked).issued_before
        for session_id in self.integration_index.sessions_of_grants_before(tenant_id, cutoff):
            self.end_for(session_id, "token_revoked", now)
        return answer

    def rotate_signing_key(
        self,
        principal: Principal,
        now: Callable[[], datetime],
        idem: IdempotencyRequest | None = None,
    ) -> Answer:
        """Make a new key current. The old one stays published (and keeps verifying)
        until every token it signed has expired, then it is retired."""

        def decide() -> Decision:
            at = now()
            tenant = self.load(
                IntegrationTenant, integration_tenant_id(principal.tenant_id)
            ) or IntegrationTenant(tenant_id=principal.tenant_id)
            changed: list[Aggregate] = [tenant, *self._retire_due_keys(tenant, at)]
            previous = self._current_key(tenant)
            until = None
            if previous is not None:
                until = published_until(at, self.settings.jwt_leeway_seconds)
                previous.supersede(at, until)
                changed.append(previous)
            changed.append(self._activate_new_key(tenant, at))
            assert tenant.current_kid is not None
            result = SigningKeyRotated(
                kid=tenant.current_kid,
                previous_kid=previous.kid if previous is not None else None,
                previous_published_until=until,
            )
            return changed, 200, result

        return self.command(decide, idem)

    # ---- helpers --------------------------------------------------------------------

    def _tenant_with_key(
        self, tenant_id: str, at: datetime
    ) -> tuple[IntegrationTenant, Sequence[Aggregate]]:
        """The tenant and the keys this command changes: its first key is created on first
        use, and superseded keys past their publication are retired on the way."""
        tenant = self.load(IntegrationTenant, integration_tenant_id(tenant_id))
        tenant = tenant or IntegrationTenant(tenant_id=tenant_id)
        keys: list[Aggregate] = list(self._retire_due_keys(tenant, at))
        if tenant.current_kid is None:
            keys.append(self._activate_new_key(tenant, at))
        return tenant, keys

    def _activate_new_key(self, tenant: IntegrationTenant, at: datetime) -> SigningKey:
        generated = self._vault().generate(tenant.tenant_id)
        key = SigningKey(
            kid=generated.kid,
            tenant_id=tenant.tenant_id,
            algorithm=SIGNING_ALGORITHM,
            public_jwk=generated.public_jwk,
            created_at=at,
        )
        tenant.activate_key(key.kid, at)
        return key

    def _current_key(self, tenant: IntegrationTenant) -> SigningKey | None:
        if tenant.current_kid is None:
            return None
        key = self.load(SigningKey, signing_key_id(tenant.current_kid))
        if key is None:
            raise RuntimeError(f"signing key {tenant.current_kid} of a tenant is missing")
        return key

    def _retire_due_keys(self, tenant: IntegrationTenant, at: datetime) -> list[SigningKey]:
        retired = []
        for kid in self.integration_index.superseded_keys(tenant.tenant_id):
            key = self.load(SigningKey, signing_key_id(kid))
            if key is not None and key.due_for_retirement(at):
                key.retire(at)
                retired.append(key)
        return retired

    def _new_grant(
        self,
        tenant: IntegrationTenant,
        subject: str,
        scopes: list[str],
        ttl_seconds: int,
        at: datetime,
        principal: Principal,
        rotated_from: str | None,
    ) -> IntegrationGrant:
        assert tenant.current_kid is not None
        return IntegrationGrant(
            jti=secrets.token_urlsafe(24),
            tenant_id=tenant.tenant_id,
            subject=subject,
            scopes=scopes,
            kid=tenant.current_kid,
            issued_at=at,
            # The token's exp (whole seconds after its iat): expires_at says exactly that.
            # issued_at stays exact, for revoke-all's "issued before".
            expires_at=at.replace(microsecond=0) + timedelta(seconds=ttl_seconds),
            granted_by=principal.user_id,
            rotated_from=rotated_from,
        )

    def _tenant_grant(self, principal: Principal, jti: str) -> IntegrationGrant:
        """The grant of the caller's tenant with this jti; another tenant's is not found."""
        grant = self.load(IntegrationGrant, integration_grant_id(jti))
        if grant is None or grant.tenant_id != principal.tenant_id:
            raise NotFound("integration token")
        return grant

    def _recorded(self, grant: IntegrationGrant) -> GrantRecorded:
        claims = token_claims(
            issuer=self.settings.integration_issuer,
            audience=self.settings.integration_audience,
            subject=grant.subject,
            tenant_id=grant.tenant_id,
            scopes=list(grant.scopes),
            jti=grant.jti,
            issued_at=grant.issued_at,
            expires_at=grant.expires_at,
        )
        return GrantRecorded(
            jti=grant.jti,
            kid=grant.kid,
            claims=claims,
            expires_at=grant.expires_at,
            expires_in=grant.ttl_seconds,
        )
