"""What verify and the public key endpoints read from the write-side integration tables.

Nothing about revocation is cached: every verify reads the revoked jti and the tenant's
cut-off from PostgreSQL (one indexed query), so a revoke that has answered is seen by every
verify that starts after it, on any process. Public keys are cached by kid, which is safe
because a kid is the RFC 7638 thumbprint of its key: a kid can never name another key.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from adapters.auth.jwk import key_from_jwk

Connect = Callable[[], AbstractContextManager[Any]]
AsyncConnect = Callable[[], AbstractAsyncContextManager[Any]]

GRANT_STATUS = (
    "SELECT g.tenant_id, g.kid, g.issued_at, (r.jti IS NOT NULL) AS revoked, "
    "t.revoked_before FROM integration_grants g "
    "LEFT JOIN revoked_tokens r ON r.jti = g.jti "
    "LEFT JOIN integration_tenants t ON t.tenant_id = g.tenant_id "
    "WHERE g.jti = %s"
)

_MAX_CACHED_KEYS = 10_000


@dataclass(frozen=True, slots=True)
class PublicSigningKey:
    kid: str
    tenant_id: str
    key: Ed25519PublicKey


@dataclass(frozen=True, slots=True)
class GrantStatus:
    """What the database says about a jti right now."""

    tenant_id: str
    kid: str
    issued_at: datetime
    revoked: bool
    revoked_before: datetime | None

    @property
    def active(self) -> bool:
        cut = self.revoked_before is not None and self.issued_at < self.revoked_before
        return not self.revoked and not cut


class IntegrationStore:
    def __init__(self, connect: Connect, async_connect: AsyncConnect | None = None) -> None:
        self._connect = connect
        self._async_connect = async_connect
        self._lock = threading.Lock()
        self._keys: dict[str, PublicSigningKey] = {}

    def public_key(self, kid: str) -> PublicSigningKey | None:
        with self._lock:
            cached = self._keys.get(kid)
        if cached is not None:
            return cached
        with self._connect() as conn:
            row = conn.execute(
                "SELECT tenant_id, public_jwk FROM signing_keys WHERE kid = %s", (kid,)
            ).fetchone()
        if row is None:
            return None  # not cached: the key may be created a moment later
        verification = key_from_jwk(row["public_jwk"])
        if not isinstance(verification.key, Ed25519PublicKey):
            return None
        found = PublicSigningKey(kid=kid, tenant_id=row["tenant_id"], key=verification.key)
        with self._lock:
            if len(self._keys) >= _MAX_CACHED_KEYS:
                self._keys.clear()
            self._keys[kid] = found
        return found

    def grant_status(self, jti: str) -> GrantStatus | None:
        """None when no grant has this jti (a token we never issued)."""
        with self._connect() as conn:
            row = conn.execute(GRANT_STATUS, (jti,)).fetchone()
        return _status(row)

    async def grant_status_async(self, jti: str) -> GrantStatus | None:
        """`grant_status`, read on the event loop."""
        if self._async_connect is None:
            raise RuntimeError("this store has no async connection")
        async with self._async_connect() as conn:
            cur = await conn.execute(GRANT_STATUS, (jti,), prepare=True)
            row = await cur.fetchone()
        return _status(row)

    def published_keys(self, tenant_id: str, now: datetime) -> list[dict[str, str]]:
        """The tenant's public JWKs that may still verify a token, oldest first."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT kid, algorithm, public_jwk FROM signing_keys WHERE tenant_id = %s "
                "AND retired_at IS NULL AND (published_until IS NULL OR published_until > %s) "
                "ORDER BY created_at, kid",
                (tenant_id, now),
            ).fetchall()
        return [_published(row) for row in rows]

    def current_key(self, tenant_id: str) -> dict[str, str] | None:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT k.kid, k.algorithm, k.public_jwk FROM integration_tenants t "
                "JOIN signing_keys k ON k.kid = t.current_kid WHERE t.tenant_id = %s",
                (tenant_id,),
            ).fetchone()
        return _published(row) if row is not None else None


def _status(row: dict[str, Any] | None) -> GrantStatus | None:
    if row is None:
        return None
    return GrantStatus(
        tenant_id=row["tenant_id"],
        kid=row["kid"],
        issued_at=row["issued_at"],
        revoked=row["revoked"],
        revoked_before=row["revoked_before"],
    )


def _published(row: dict[str, Any]) -> dict[str, str]:
    return {**row["public_jwk"], "kid": row["kid"], "alg": row["algorithm"], "use": "sig"}
