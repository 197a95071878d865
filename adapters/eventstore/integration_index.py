"""The integration-token rows that commit in the same transaction as their events: signing
keys (public halves), grants, revoked jtis and each tenant's revoke-all cut-off.

Because they commit with the events, a command's answer implies its rows are visible to
every later read on any process: verify reads `revoked_tokens` and the cut-off on every
call, which is what makes revocation immediate while the Kafka-fed projection catches up.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.utils import get_topic
from psycopg.types.json import Jsonb

from domain.integration_grant import IntegrationGrant
from domain.integration_tenant import IntegrationTenant
from domain.signing_key import SigningKey

KEY_CREATED = f"{get_topic(SigningKey)}.Created"
KEY_SUPERSEDED = f"{get_topic(SigningKey)}.Superseded"
KEY_RETIRED = f"{get_topic(SigningKey)}.Retired"
GRANTED = f"{get_topic(IntegrationGrant)}.Granted"
GRANT_REVOKED = f"{get_topic(IntegrationGrant)}.Revoked"
GRANT_ROTATED = f"{get_topic(IntegrationGrant)}.Rotated"
TENANT_REGISTERED = f"{get_topic(IntegrationTenant)}.Registered"
KEY_ACTIVATED = f"{get_topic(IntegrationTenant)}.KeyActivated"
ALL_REVOKED = f"{get_topic(IntegrationTenant)}.AllRevoked"

TOPICS = frozenset(
    {KEY_CREATED, KEY_SUPERSEDED, KEY_RETIRED, GRANTED, GRANT_REVOKED, GRANT_ROTATED,
     TENANT_REGISTERED, KEY_ACTIVATED, ALL_REVOKED}
)

_decoder = msgspec.json.Decoder()


def _datetime(encoded: Any) -> datetime:
    # eventsourcing's JSON transcoder writes datetimes as {"_type_": ..., "_data_": iso}.
    return datetime.fromisoformat(encoded["_data_"])


def integration_rows(e: StoredEvent) -> list[tuple[str, tuple[Any, ...]]]:
    """The statements that update the write-side integration tables for one event of a
    topic in TOPICS."""
    state = _decoder.decode(e.state)
    if e.topic == KEY_CREATED:
        return [(
            "INSERT INTO signing_keys (aggregate_id, kid, tenant_id, algorithm, public_jwk,"
            " created_at) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (e.originator_id, state["kid"], state["tenant_id"], state["algorithm"],
             Jsonb(state["public_jwk"]), _datetime(state["created_at"])),
        )]
    if e.topic == KEY_SUPERSEDED:
        return [(
            "UPDATE signing_keys SET published_until = %s WHERE aggregate_id = %s",
            (_datetime(state["published_until"]), e.originator_id),
        )]
    if e.topic == KEY_RETIRED:
        return [(
            "UPDATE signing_keys SET retired_at = %s WHERE aggregate_id = %s",
            (_datetime(state["retired_at"]), e.originator_id),
        )]
    if e.topic == TENANT_REGISTERED:
        return [(
            "INSERT INTO integration_tenants (aggregate_id, tenant_id) VALUES (%s, %s) "
            "ON CONFLICT DO NOTHING",
            (e.originator_id, state["tenant_id"]),
        )]
    if e.topic == KEY_ACTIVATED:
        return [(
            "UPDATE integration_tenants SET current_kid = %s WHERE aggregate_id = %s",
            (state["kid"], e.originator_id),
        )]
    if e.topic == ALL_REVOKED:
        return [(
            "UPDATE integration_tenants SET revoked_before = "
            "GREATEST(revoked_before, %s) WHERE aggregate_id = %s",
            (_datetime(state["issued_before"]), e.originator_id),
        )]
    if e.topic == GRANTED:
        return [(
            "INSERT INTO integration_grants (grant_id, jti, tenant_id, subject, kid, issued_at,"
            " expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (e.originator_id, state["jti"], state["tenant_id"], state["subject"], state["kid"],
             _datetime(state["issued_at"]), _datetime(state["expires_at"])),
        )]
    if e.topic in (GRANT_REVOKED, GRANT_ROTATED):
        rotated = e.topic == GRANT_ROTATED
        at = _datetime(state["rotated_at" if rotated else "revoked_at"])
        return [(
            "INSERT INTO revoked_tokens (jti, tenant_id, revoked_at, expires_at, reason) "
            "SELECT jti, tenant_id, %s, expires_at, %s FROM integration_grants "
            "WHERE grant_id = %s ON CONFLICT DO NOTHING",
            (at, "rotated" if rotated else state["reason"], e.originator_id),
        )]
    return []


class IntegrationIndexQueries:
    """The `application.integration.IntegrationIndex` port, for the recorder."""

    datastore: PostgresDatastore

    def superseded_keys(self, tenant_id: str) -> list[str]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                "SELECT kid FROM signing_keys WHERE tenant_id = %s "
                "AND published_until IS NOT NULL AND retired_at IS NULL",
                (tenant_id,),
            )
            return [row["kid"] for row in curs.fetchall()]

    def sessions_started_with(self, jti: str) -> list[UUID]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                "SELECT session_id FROM active_sessions "
                "WHERE credential = 'integration' AND credential_id = %s",
                (jti,),
            )
            return [row["session_id"] for row in curs.fetchall()]

    def sessions_of_grants_before(self, tenant_id: str, cutoff: datetime) -> list[UUID]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                "SELECT a.session_id FROM active_sessions a "
                "JOIN integration_grants g ON g.jti = a.credential_id "
                "WHERE a.credential = 'integration' AND g.tenant_id = %s "
                "AND g.issued_at < %s",
                (tenant_id, cutoff),
            )
            return [row["session_id"] for row in curs.fetchall()]

    def sessions_with_revoked_tokens(self) -> list[UUID]:
        """Active sessions whose integration token is revoked (by jti, not by rotation,
        which hands the session on to the new token) or under its tenant's cut-off: the
        reaper's backstop for a session that committed just after a revoke's sweep."""
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                "SELECT a.session_id FROM active_sessions a "
                "JOIN integration_grants g ON g.jti = a.credential_id "
                "LEFT JOIN revoked_tokens r ON r.jti = g.jti AND r.reason <> 'rotated' "
                "LEFT JOIN integration_tenants t ON t.tenant_id = g.tenant_id "
                "WHERE a.credential = 'integration' "
                "AND (r.jti IS NOT NULL OR g.issued_at < t.revoked_before)"
            )
            return [row["session_id"] for row in curs.fetchall()]
