"""eventsourcing's PostgreSQL application recorder, extended with what must commit in the
same transaction as a command's events:

- the command's idempotency record (its answer and the position of its last event), so a
  crash can never leave an effect without its answer or an answer without its effect;
- the write-side index of active sessions, which the reaper scans;
- the write-side index of API keys, which key listing reads;
- the integration-token rows (signing keys, grants, revoked jtis, revoke-all cut-offs),
  which every verify reads (adapters/eventstore/integration_index.py);
- one hash-chain link per event, in commit order (adapters/eventstore/chain.py).

A second insert of the same idempotency key fails the whole transaction with an
IntegrityError (a RecordConflictError), exactly like a concurrent write to an aggregate.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import get_topic
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from adapters.eventstore.chain import INSERT_LINK, link_params
from adapters.eventstore.history import LOCK_FUNCTION
from adapters.eventstore.integration_index import TOPICS as INTEGRATION_TOPICS
from adapters.eventstore.integration_index import IntegrationIndexQueries, write_integration_rows
from application.idempotency import IdempotencyRecord, StoredAnswer
from domain.api_key import ApiKey
from domain.session import LiveSession

SESSION_STARTED = f"{get_topic(LiveSession)}.Started"
SESSION_ENDED = f"{get_topic(LiveSession)}.Ended"
KEY_ISSUED = f"{get_topic(ApiKey)}.Issued"
KEY_REVOKED = f"{get_topic(ApiKey)}.Revoked"

_state_decoder = msgspec.json.Decoder()


def _datetime(encoded: Any) -> datetime:
    # eventsourcing's JSON transcoder writes datetimes as {"_type_": ..., "_data_": iso}.
    return datetime.fromisoformat(encoded["_data_"])


class LiveRecorder(IntegrationIndexQueries, PostgresApplicationRecorder):
    """Also the application's durable IdempotencyStore."""

    # Off only in the throughput benchmark's baseline (ops/bench_audit.py).
    chain_events = True

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        # The application role may not LOCK the append-only table itself (that needs
        # UPDATE or DELETE privilege); a SECURITY DEFINER function takes the same lock.
        self.lock_table_statements[-1] = SQL("SELECT {}.{}()").format(
            Identifier(datastore.schema), Identifier(LOCK_FUNCTION)
        )

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        record: IdempotencyRecord | None = kwargs.get("idempotency")
        if record is not None:
            curs.execute(
                "INSERT INTO idempotency (owner, key, fingerprint, status, body) "
                "VALUES (%s, %s, %s, %s, %s)",
                (record.owner, record.key, record.fingerprint, record.status, record.body),
            )
        for e in stored_events:
            if e.topic == SESSION_STARTED:
                state = _state_decoder.decode(e.state)
                curs.execute(
                    "INSERT INTO active_sessions (session_id, credential, credential_id) "
                    "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    (e.originator_id, state.get("credential"), state.get("credential_id")),
                )
            elif e.topic == SESSION_ENDED:
                curs.execute(
                    "DELETE FROM active_sessions WHERE session_id = %s", (e.originator_id,)
                )
            elif e.topic == KEY_ISSUED:
                state = _state_decoder.decode(e.state)
                curs.execute(
                    "INSERT INTO api_keys (aggregate_id, key_id, key_hash, tenant_id, user_id,"
                    " name, scopes, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    (
                        e.originator_id,
                        state["key_id"],
                        state["key_hash"],
                        state["tenant_id"],
                        state["user_id"],
                        state["name"],
                        " ".join(state["scopes"]),
                        _datetime(state["issued_at"]),
                    ),
                )
            elif e.topic == KEY_REVOKED:
                curs.execute(
                    "UPDATE api_keys SET revoked_at = %s WHERE aggregate_id = %s",
                    (_datetime(_state_decoder.decode(e.state)["revoked_at"]), e.originator_id),
                )
            elif e.topic in INTEGRATION_TOPICS:
                write_integration_rows(curs, e)
        super()._insert_events(curs, stored_events, **kwargs)

    def _fetch_ids_after_insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids = super()._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        if ids and self.chain_events:
            # Still under the table lock: links are appended in commit order.
            curs.executemany(INSERT_LINK, link_params(ids, stored_events))
        record: IdempotencyRecord | None = kwargs.get("idempotency")
        if record is not None and ids:
            curs.execute(
                "UPDATE idempotency SET position = %s WHERE owner = %s AND key = %s",
                (max(ids), record.owner, record.key),
            )
        return ids

    # ---- IdempotencyStore -----------------------------------------------------------

    def find(self, owner: str, key: str) -> tuple[str, StoredAnswer] | None:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                "SELECT fingerprint, status, body, position FROM idempotency "
                "WHERE owner = %s AND key = %s",
                (owner, key),
            )
            row = curs.fetchone()
        if row is None:
            return None
        return row["fingerprint"], StoredAnswer(
            status=row["status"], body=bytes(row["body"]), position=row["position"]
        )

    def api_key_owner(self, key_hash: str) -> tuple[str, str, str, str] | None:
        """(key_id, tenant_id, user_id, scopes) of the unrevoked key with this hash."""
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                "SELECT key_id, tenant_id, user_id, scopes FROM api_keys "
                "WHERE key_hash = %s AND revoked_at IS NULL",
                (key_hash,),
            )
            row = curs.fetchone()
        if row is None:
            return None
        return row["key_id"], row["tenant_id"], row["user_id"], row["scopes"]

    def api_keys_of(self, tenant_id: str, user_id: str) -> list[dict[str, Any]]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                "SELECT key_id, name, scopes, created_at, revoked_at FROM api_keys "
                "WHERE tenant_id = %s AND user_id = %s ORDER BY created_at DESC, key_id",
                (tenant_id, user_id),
            )
            return list(curs.fetchall())

    def put(self, record: IdempotencyRecord, position: int | None) -> bool:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                "INSERT INTO idempotency (owner, key, fingerprint, status, body, position) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (record.owner, record.key, record.fingerprint, record.status, record.body,
                 position),
            )
            return curs.rowcount == 1
