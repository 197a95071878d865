"""Deterministic aggregate ids: one stream per natural key, so concurrent creators collide
on version 1 and optimistic concurrency decides, instead of creating duplicates."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID, uuid5

NAMESPACE = UUID("6f1d4c8e-2b1a-4f0e-9a43-1c2d3e4f5a6b")


def account_id(tenant_id: str, user_id: str) -> UUID:
    return uuid5(NAMESPACE, f"account\x00{tenant_id}\x00{user_id}")


def ledger_id(tenant_id: str, user_id: str, period_start: datetime) -> UUID:
    return uuid5(NAMESPACE, f"ledger\x00{tenant_id}\x00{user_id}\x00{period_start:%Y-%m}")


def api_key_id(key_id: str) -> UUID:
    return uuid5(NAMESPACE, f"api-key\x00{key_id}")


def signing_key_id(kid: str) -> UUID:
    return uuid5(NAMESPACE, f"signing-key\x00{kid}")


def integration_grant_id(jti: str) -> UUID:
    return uuid5(NAMESPACE, f"integration-grant\x00{jti}")


def integration_tenant_id(tenant_id: str) -> UUID:
    return uuid5(NAMESPACE, f"integration-tenant\x00{tenant_id}")


def live_transcript_id(session_id: str) -> UUID:
    """The transcript a live session records into, found from the session id alone."""
    return uuid5(NAMESPACE, f"live-transcript\x00{session_id}")
