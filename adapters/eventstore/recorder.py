"""eventsourcing's PostgreSQL application recorder, extended with what must commit in the
same transaction as a command's events:

- the command's idempotency record (its answer and the position of its last event), so a
  crash can never leave an effect without its answer or an answer without its effect;
- the write-side index of active sessions, which the reaper scans;
- the write-side index of API keys, which key listing reads;
- the integration-token rows (signing keys, grants, revoked jtis, revoke-all cut-offs),
  which every verify reads (adapters/eventstore/integration_index.py);
- one hash-chain link per event, in commit order (adapters/eventstore/chain.py).

The events, the idempotency answer and the chain go in through one database function
(adapters/eventstore/append.py); index rows, when an event needs any, go first in the
same transaction. A second insert of the same idempotency key fails the append with an
IntegrityError (a RecordConflictError), exactly like a concurrent write to an aggregate.

Appends without index rows (the sessions' and ledgers', nearly all of them) that arrive
while another is in flight commit together, in one transaction and one WAL flush
(adapters/eventstore/group_commit.py); each still answers, or conflicts, on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    StoredEvent,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import get_topic, retry
from psycopg.types.composite import CompositeInfo

from adapters.eventstore.append import (
    APPEND_CALL,
    GROUPED_CALL,
    EventRows,
    TextArray,
    UuidArray,
)
from adapters.eventstore.chain import stored_timestamp
from adapters.eventstore.group_commit import GroupCommit
from adapters.eventstore.history import EVENTS_TABLE
from adapters.eventstore.integration_index import TOPICS as INTEGRATION_TOPICS
from adapters.eventstore.integration_index import IntegrationIndexQueries, integration_rows
from application.idempotency import IdempotencyRecord, StoredAnswer
from domain.api_key import ApiKey
from domain.session import LiveSession

SESSION_STARTED = f"{get_topic(LiveSession)}.Started"
SESSION_ENDED = f"{get_topic(LiveSession)}.Ended"
KEY_ISSUED = f"{get_topic(ApiKey)}.Issued"
KEY_REVOKED = f"{get_topic(ApiKey)}.Revoked"

_state_decoder = msgspec.json.Decoder()

# The unrevoked key with this hash (API-key authentication reads it on every request).
API_KEY_OWNER = (
    "SELECT key_id, tenant_id, user_id, scopes FROM api_keys "
    "WHERE key_hash = %s AND revoked_at IS NULL"
)


def _datetime(encoded: Any) -> datetime:
    # eventsourcing's JSON transcoder writes datetimes as {"_type_": ..., "_data_": iso}.
    return datetime.fromisoformat(encoded["_data_"])


def _started_row(e: StoredEvent) -> tuple[Any, Any, Any]:
    """A started session's row of the active-sessions index: who started it, with what."""
    state = _state_decoder.decode(e.state)
    return e.originator_id, state.get("credential"), state.get("credential_id")


def _index_rows(e: StoredEvent) -> list[tuple[str, tuple[Any, ...]]]:
    """The write-side index statements an event needs besides what the append function
    keeps itself (the active sessions): none for most events."""
    if e.topic == KEY_ISSUED:
        state = _state_decoder.decode(e.state)
        return [(
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
        )]
    if e.topic == KEY_REVOKED:
        return [(
            "UPDATE api_keys SET revoked_at = %s WHERE aggregate_id = %s",
            (_datetime(_state_decoder.decode(e.state)["revoked_at"]), e.originator_id),
        )]
    if e.topic in INTEGRATION_TOPICS:
        return integration_rows(e)
    return []


class LiveRecorder(IntegrationIndexQueries, PostgresApplicationRecorder):
    """Also the application's durable IdempotencyStore."""

    # The database function that appends (adapters/eventstore/append.py); the chain-cost
    # benchmark's baseline swaps in an unchained one of its own database.
    append_call = APPEND_CALL
    grouped_call = GROUPED_CALL

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        if events_table_name != EVENTS_TABLE:
            raise ValueError(f"the append function writes {EVENTS_TABLE} only")
        self._lock_timeout = f"{datastore.lock_timeout}s"
        # Appends of this process that arrive while one is in flight commit together.
        self._group: GroupCommit[tuple[Any, ...], list[int]] = GroupCommit(
            self._append_one, self._append_group
        )

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Append in one call of the append function, committed together with the
        process's other appends in flight (GroupCommit). Events that also change another
        write-side index (API keys, integration tokens) send those rows first, in a
        transaction of their own, pipelined."""
        params = self.append_params(stored_events, kwargs.get("idempotency"))
        side = [statement for e in stored_events for statement in _index_rows(e)]
        if not side:
            return self._group.submit(params)
        with (
            self.datastore.get_connection() as conn,
            conn.pipeline(),
            conn.transaction(),
            conn.cursor() as curs,
        ):
            for statement, args in side:
                curs.execute(statement, args)
            curs.execute(self.append_call, params, prepare=True)
            return [row["position"] for row in curs.fetchall()]

    def append_params(
        self, stored_events: Sequence[StoredEvent], record: IdempotencyRecord | None
    ) -> tuple[Any, ...]:
        """The append function's arguments for these events and idempotency answer."""
        started = [_started_row(e) for e in stored_events if e.topic == SESSION_STARTED]
        return (
            EventRows(stored_events, self._event_type()),
            TextArray([stored_timestamp(e.state) for e in stored_events]),
            self._lock_timeout,
            *(
                (record.owner, record.key, record.fingerprint, record.status, record.body)
                if record is not None
                else (None, None, None, None, None)
            ),
            UuidArray([session for session, _, _ in started]),
            TextArray([credential for _, credential, _ in started]),
            TextArray([credential_id for _, _, credential_id in started]),
            UuidArray([e.originator_id for e in stored_events if e.topic == SESSION_ENDED]),
        )

    def _append_one(self, params: tuple[Any, ...]) -> list[int]:
        """One append alone: one statement, committed on its own."""
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self.append_call, params, prepare=True)
            return [row["position"] for row in curs.fetchall()]

    def _append_group(
        self, group: Sequence[tuple[Any, ...]]
    ) -> list[list[int] | BaseException]:
        """Several appends in one transaction (one flush), in order, pipelined; each
        answers its positions, or its own conflict, which leaves the others to commit."""
        outcomes: list[list[int] | BaseException] = []
        with (
            self.datastore.get_connection() as conn,
            conn.pipeline(),
            conn.transaction(),
            conn.cursor() as curs,
        ):
            curs.executemany(self.grouped_call, group, returning=True)
            while True:
                row = curs.fetchone()
                if row is None:
                    raise ProgrammingError("the grouped append answered no row")
                if row["conflict"] is not None:
                    outcomes.append(IntegrityError(row["conflict"]))
                else:
                    outcomes.append(list(row["positions"]))
                if not curs.nextset():
                    break
        return outcomes

    def _event_type(self) -> CompositeInfo:
        """The store's composite type for an event, as the datastore fetched it."""
        try:
            return self.datastore.psycopg_type_adapters[self.stored_event_type_name]
        except KeyError:
            raise ProgrammingError(
                f"Composite type '{self.stored_event_type_name}' not found"
            ) from None

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def select_events_after(
        self, versions: Sequence[tuple[UUID, int]]
    ) -> Sequence[StoredEvent]:
        """Each aggregate's events after its given version, in one query (LiveApplication
        brings a session and its ledger up to date together)."""
        if not versions:
            return []
        where = " OR ".join(["(originator_id = %s AND originator_version > %s)"] * len(versions))
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                f"SELECT originator_id, originator_version, topic, state FROM {EVENTS_TABLE} "  # noqa: S608
                f"WHERE {where} ORDER BY originator_id, originator_version",
                [value for pair in versions for value in pair],
                prepare=True,
            )
            return [
                StoredEvent(
                    originator_id=row["originator_id"],
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=bytes(row["state"]),
                )
                for row in curs.fetchall()
            ]

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
            curs.execute(API_KEY_OWNER, (key_hash,))
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

    def last_position(self, aggregate_ids: Sequence[UUID]) -> int | None:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                f"SELECT max(notification_id) AS position FROM {EVENTS_TABLE} "  # noqa: S608
                "WHERE originator_id = ANY(%s)",
                (list(aggregate_ids),),
            )
            row = curs.fetchone()
        return None if row is None else row["position"]

    def put(self, record: IdempotencyRecord, position: int | None) -> bool:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                "INSERT INTO idempotency (owner, key, fingerprint, status, body, position) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (record.owner, record.key, record.fingerprint, record.status, record.body,
                 position),
            )
            return curs.rowcount == 1
