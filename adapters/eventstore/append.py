"""One database function that appends a command's events: `xentree_append`.

It serialises appenders (so positions are issued in commit order, which is what lets a
reader of the notification log never skip one), records the command's idempotency answer,
keeps the index of active sessions, inserts the events, extends the hash chain
(adapters/eventstore/chain.py) and notifies the relay, all in one statement: one round
trip per command instead of the pipelined transaction of several statements the library
sends. It is SECURITY DEFINER because the application role may not write history rows
itself; it can do nothing but append.

Appenders take a transaction-scoped advisory lock, not the eventsourcing recorder's
`LOCK TABLE ... IN EXCLUSIVE MODE`: the table lock also conflicts with autovacuum (SHARE
UPDATE EXCLUSIVE), which then blocks every append until the deadlock check cancels it a
second later (seen as one-second stalls in the heartbeat's p99). Every append goes
through this function (the role holds no INSERT on history), so the advisory lock
serialises them all the same.

A process's appends that arrive while one of its appends is in flight commit together,
each through `xentree_append_grouped` (the append function in a subtransaction), in one
transaction (adapters/eventstore/group_commit.py).

The chain digest computed here must equal `chain.event_digest` byte for byte (a unit test
and every `audit verify` check it); the event's stored timestamp comes from the caller,
computed by `chain.stored_timestamp`, so both sides read it the same way.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import StoredEvent
from psycopg import pq, sql
from psycopg.abc import Buffer
from psycopg.adapt import Dumper, PyFormat
from psycopg.types.composite import CompositeInfo

from adapters.eventstore.history import CHAIN_TABLE, EVENTS_TABLE, SCHEMA
from adapters.eventstore.session_ends import CHANNEL as SESSIONS_ENDED

APPEND_FUNCTION = "xentree_append"
# One append of a group committed together (adapters/eventstore/group_commit.py).
GROUPED_FUNCTION = "xentree_append_grouped"
# The advisory lock every appender holds until it commits (migrations use 7_241_117).
APPEND_LOCK = 7_241_118
DIGEST_FUNCTION = "xentree_event_digest"
STORED_EVENT_TYPE = "stored_event_uuid"  # the eventsourcing recorder's composite type

DIGEST_DDL = f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.{DIGEST_FUNCTION}(
    pos bigint, aggregate_id uuid, version bigint, topic text, stamp text, state bytea
) RETURNS bytea LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT sha256(
        convert_to('xentree-live/event-chain/v1', 'UTF8')
        || int8send(8::bigint) || int8send(pos)
        || int8send(octet_length(aggregate_id::text)::bigint)
        || convert_to(aggregate_id::text, 'UTF8')
        || int8send(8::bigint) || int8send(version)
        || int8send(octet_length(convert_to(topic, 'UTF8'))::bigint)
        || convert_to(topic, 'UTF8')
        || int8send(octet_length(convert_to(stamp, 'UTF8'))::bigint)
        || convert_to(stamp, 'UTF8')
        || int8send(octet_length(state)::bigint) || state
    )
$$;
"""


_PARAMETERS = """
    events {schema}.{event_type}[],
    stamps text[],
    lock_timeout text,
    idem_owner text,
    idem_key text,
    idem_fingerprint text,
    idem_status integer,
    idem_body bytea,
    started uuid[],
    started_credential text[],
    started_credential_id text[],
    ended uuid[]"""


def append_function_ddl(name: str = APPEND_FUNCTION, *, chained: bool = True) -> str:
    """The append function. `chained=False` only for the chain-cost benchmark's baseline
    (a database of its own): an unchained event is exactly what `audit verify` reports."""
    chain = (
        f"""
        previous := sha256(previous || {SCHEMA}.{DIGEST_FUNCTION}(
            at, (events[k]).originator_id, (events[k]).originator_version,
            (events[k]).topic, stamps[k], (events[k]).state));
        INSERT INTO {SCHEMA}.{CHAIN_TABLE} (position, hash) VALUES (at, previous);"""
        if chained
        else ""
    )
    parameters = _PARAMETERS.format(schema=SCHEMA, event_type=STORED_EVENT_TYPE)
    return f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.{name}({parameters}
) RETURNS SETOF bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    previous bytea;
    at bigint;
BEGIN
    PERFORM set_config('lock_timeout', lock_timeout, true);
    PERFORM pg_advisory_xact_lock({APPEND_LOCK});
    IF idem_key IS NOT NULL THEN
        INSERT INTO {SCHEMA}.idempotency (owner, key, fingerprint, status, body)
        VALUES (idem_owner, idem_key, idem_fingerprint, idem_status, idem_body);
    END IF;
    -- The write-side index of active sessions, which the reaper and revocation read.
    IF cardinality(started) > 0 THEN
        INSERT INTO {SCHEMA}.active_sessions (session_id, credential, credential_id)
        SELECT * FROM unnest(started, started_credential, started_credential_id)
        ON CONFLICT DO NOTHING;
    END IF;
    IF cardinality(ended) > 0 THEN
        DELETE FROM {SCHEMA}.active_sessions WHERE session_id = ANY(ended);
        -- Listeners (the realtime bridge) hear of each end once it commits.
        PERFORM pg_notify('{SESSIONS_ENDED}', array_to_string(ended, ','));
    END IF;
    NOTIFY {EVENTS_TABLE};
    SELECT hash INTO previous FROM {SCHEMA}.{CHAIN_TABLE} ORDER BY position DESC LIMIT 1;
    previous := coalesce(previous, '\\x{"00" * 32}'::bytea);
    FOR k IN 1 .. coalesce(array_length(events, 1), 0) LOOP
        INSERT INTO {SCHEMA}.{EVENTS_TABLE} (originator_id, originator_version, topic, state)
        VALUES ((events[k]).originator_id, (events[k]).originator_version,
                (events[k]).topic, (events[k]).state)
        RETURNING notification_id INTO at;{chain}
        RETURN NEXT at;
    END LOOP;
    IF idem_key IS NOT NULL THEN
        UPDATE {SCHEMA}.idempotency SET position = at
        WHERE owner = idem_owner AND key = idem_key;
    END IF;
END
$$;
"""


def grouped_function_ddl(
    name: str = GROUPED_FUNCTION, append: str = APPEND_FUNCTION
) -> str:
    """One append of a group committed together (adapters/eventstore/group_commit.py):
    the append function, in a subtransaction of the group's transaction, so an append
    that conflicts (a unique violation: an aggregate's version or an idempotency key
    taken) answers its conflict and leaves the group's others to commit. The lock is taken
    outside the subtransaction: a lock timeout fails the whole group."""
    parameters = _PARAMETERS.format(schema=SCHEMA, event_type=STORED_EVENT_TYPE)
    return f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.{name}({parameters},
    OUT positions bigint[],
    OUT conflict text
) LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM set_config('lock_timeout', lock_timeout, true);
    PERFORM pg_advisory_xact_lock({APPEND_LOCK});
    BEGIN
        positions := ARRAY(SELECT {SCHEMA}.{append}(
            events, stamps, lock_timeout, idem_owner, idem_key, idem_fingerprint,
            idem_status, idem_body, started, started_credential, started_credential_id,
            ended));
    EXCEPTION WHEN unique_violation THEN
        GET STACKED DIAGNOSTICS conflict = MESSAGE_TEXT;
    END;
END
$$;
"""


APPEND_SIGNATURE = (
    f"{APPEND_FUNCTION}({SCHEMA}.{STORED_EVENT_TYPE}[], text[], text, text, text, text, "
    "integer, bytea, uuid[], text[], text[], uuid[])"
)
# The events go in binary (`%b`): psycopg's text form of an array of composites quotes
# every field and escapes each state's bytes as hex, about twice the interpreter time of
# the binary form (`.venv/bin/python ops/bench_append_params.py`).
APPEND_CALL = (
    f"SELECT {SCHEMA}.{APPEND_FUNCTION}(%b, %s, %s, %s, %s, %s, %s, %s, "
    "%s::uuid[], %s::text[], %s::text[], %s::uuid[]) AS position"
)
GROUPED_SIGNATURE = APPEND_SIGNATURE.replace(APPEND_FUNCTION, GROUPED_FUNCTION, 1)
GROUPED_CALL = (
    f"SELECT positions, conflict FROM {SCHEMA}.{GROUPED_FUNCTION}(%b, %s, %s, %s, %s, %s, "
    "%s, %s, %s::uuid[], %s::text[], %s::text[], %s::uuid[])"
)


class TextArray(list[str | None]):
    """A `text[]` argument of the append call. psycopg chooses how to send a plain list by
    looking through its elements on every call (with the call's five lists, about a tenth
    of the API's interpreter time in the start + end pairs, py-spy `--gil`); this one it
    sends as an array literal, with no looking."""


class UuidArray(list[UUID | str]):
    """A `uuid[]` argument of the append call (see TextArray)."""


def _quoted(value: str | None) -> str:
    """An array literal's element: NULL, or the text in double quotes, with its quotes and
    backslashes escaped (PostgreSQL's array input syntax)."""
    if value is None:
        return "NULL"
    if "\x00" in value:
        raise psycopg.DataError("PostgreSQL text cannot contain NUL (0x00) bytes")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _array_literal(values: Iterable[str | None]) -> bytes:
    return ("{" + ",".join(map(_quoted, values)) + "}").encode()


class _TextArrayDumper(Dumper):
    oid = psycopg.postgres.types["text"].array_oid

    def dump(self, obj: TextArray) -> Buffer:
        return _array_literal(obj)


class _UuidArrayDumper(Dumper):
    oid = psycopg.postgres.types["uuid"].array_oid

    def dump(self, obj: UuidArray) -> Buffer:
        # Quoted like text: a str element that is not a UUID is refused by PostgreSQL as
        # one element, never read as several.
        return _array_literal(map(str, obj))


# The store's composite type for an event (eventsourcing's `stored_event_uuid`), field by
# field: uuid, bigint, text, bytea.
EVENT_FIELD_TYPES = (
    psycopg.postgres.types["uuid"].oid,
    psycopg.postgres.types["int8"].oid,
    psycopg.postgres.types["text"].oid,
    psycopg.postgres.types["bytea"].oid,
)
# PostgreSQL's binary array (array_send): dimensions, has-nulls, element type; the one
# dimension's length and lower bound.
_ARRAY_HEAD = struct.Struct("!iiIii")
# One element: its length, then the record (record_send): four fields, each type, length,
# bytes; all but the topic's and the state's bytes are fixed.
_EVENT_HEAD = struct.Struct("!iiIi16sIiqIi")
_STATE_HEAD = struct.Struct("!Ii")
_EVENT_FIXED = _EVENT_HEAD.size - 4 + _STATE_HEAD.size  # the record's length less its texts


class EventRows(list[StoredEvent]):
    """The append call's events, as one binary array of the store's composite type that we
    pack here: psycopg's own way makes a record of each event and looks through the list
    and each record on every call (the larger part of what remained of the call's
    interpreter time)."""

    def __init__(self, events: Sequence[StoredEvent], info: CompositeInfo) -> None:
        super().__init__(events)
        if tuple(info.field_types) != EVENT_FIELD_TYPES:
            raise ValueError(f"{info.name} is not (uuid, bigint, text, bytea)")
        self.info = info


class _EventRowsDumper(Dumper):
    format = pq.Format.BINARY

    def get_key(self, obj: EventRows, format: PyFormat) -> Any:
        return (EventRows, obj.info.array_oid)

    def upgrade(self, obj: EventRows, format: PyFormat) -> Dumper:
        dumper = _EventRowsDumper(self.cls)
        dumper.oid = obj.info.array_oid
        return dumper

    def dump(self, obj: EventRows) -> Buffer:
        uuid_oid, int8_oid, text_oid, bytea_oid = EVENT_FIELD_TYPES
        parts = [_ARRAY_HEAD.pack(1, 0, obj.info.oid, len(obj), 1)]
        for event in obj:
            originator = event.originator_id
            if not isinstance(originator, UUID):
                originator = UUID(originator)
            topic, state = event.topic.encode(), bytes(event.state)
            parts += (
                _EVENT_HEAD.pack(
                    _EVENT_FIXED + len(topic) + len(state), 4,
                    uuid_oid, 16, originator.bytes,
                    int8_oid, 8, event.originator_version,
                    text_oid, len(topic),
                ),
                topic,
                _STATE_HEAD.pack(bytea_oid, len(state)),
                state,
            )
        return b"".join(parts)


psycopg.adapters.register_dumper(EventRows, _EventRowsDumper)
psycopg.adapters.register_dumper(TextArray, _TextArrayDumper)
psycopg.adapters.register_dumper(UuidArray, _UuidArrayDumper)


def install(conn: psycopg.Connection[Any], role: str) -> None:
    """Create (or replace) the digest and append functions; run by `migrate` as the owner,
    after the history tables exist."""
    conn.execute(DIGEST_DDL)
    conn.execute(append_function_ddl())
    conn.execute(grouped_function_ddl())
    if role:
        for signature in (APPEND_SIGNATURE, GROUPED_SIGNATURE):
            conn.execute(
                sql.SQL("GRANT EXECUTE ON FUNCTION {}.{} TO {}").format(
                    sql.Identifier(SCHEMA), sql.SQL(signature), sql.Identifier(role)
                )
            )
