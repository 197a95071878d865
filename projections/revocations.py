"""The jti-revocation read model, fed from Kafka: one row per integration grant (revoked or
not, and why), and one row per tenant with its revoke-all cut-off.

Verify does not wait for this model: it reads the write-side rows that commit with the
revocation event (so a revoke is immediate); this model is the stream's view of the same
facts, for audits, rebuilds and analysts, and it can be rebuilt from the event store.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from projections.stream import Event, Step, event_name, step, timestamp

GRANT_AGGREGATE = "IntegrationGrant"
TENANT_AGGREGATE = "IntegrationTenant"


class RevocationRow(msgspec.Struct, frozen=True, kw_only=True):
    jti: str
    tenant_id: str
    issued_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    reason: str | None
    version: int
    position: int


class CutoffRow(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    revoked_before: datetime | None
    version: int
    position: int


def _applies(aggregate: str, version: int | None, event: Event) -> bool:
    if event.type.rpartition(".")[0] != f"xentree.live.{aggregate}":
        return False
    return step(version, event.aggregateversion) is Step.APPLY


def apply_grant(row: RevocationRow | None, event: Event) -> RevocationRow | None:
    """The grant's row after `event`; None when the event changes nothing."""
    if not _applies(GRANT_AGGREGATE, row.version if row else None, event):
        return None
    d, name = event.data, event_name(event)
    if row is None:
        if name != "Granted":
            return None
        return RevocationRow(
            jti=d["jti"],
            tenant_id=d["tenant_id"],
            issued_at=timestamp(d["issued_at"]),
            expires_at=timestamp(d["expires_at"]),
            revoked_at=None,
            reason=None,
            version=event.aggregateversion,
            position=event.position,
        )
    tracked = msgspec.structs.replace(row, version=event.aggregateversion, position=event.position)
    if row.revoked_at is not None:
        return tracked  # the first revocation stands
    if name == "Revoked":
        return msgspec.structs.replace(
            tracked, revoked_at=timestamp(d["revoked_at"]), reason=d["reason"]
        )
    if name == "Rotated":
        return msgspec.structs.replace(
            tracked, revoked_at=timestamp(d["rotated_at"]), reason="rotated"
        )
    return tracked


def apply_tenant(row: CutoffRow | None, event: Event) -> CutoffRow | None:
    """The tenant's cut-off row after `event`; None when the event changes nothing."""
    if not _applies(TENANT_AGGREGATE, row.version if row else None, event):
        return None
    d, name = event.data, event_name(event)
    if row is None:
        if name != "Registered":
            return None
        return CutoffRow(
            tenant_id=d["tenant_id"],
            revoked_before=None,
            version=event.aggregateversion,
            position=event.position,
        )
    tracked = msgspec.structs.replace(row, version=event.aggregateversion, position=event.position)
    if name == "AllRevoked":
        cutoff = timestamp(d["issued_before"])
        if row.revoked_before is None or cutoff > row.revoked_before:
            return msgspec.structs.replace(tracked, revoked_before=cutoff)
    return tracked
