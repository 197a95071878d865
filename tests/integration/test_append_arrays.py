"""The append call's array arguments reach PostgreSQL as the values they hold: the text and
uuid arrays (TextArray, UuidArray), sent as array literals we write, and the events
(EventRows), sent as a binary array of the store's composite type we pack."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import uuid4

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent
from psycopg.types.composite import CompositeInfo, register_composite

from adapters.eventstore.append import EventRows, TextArray, UuidArray
from tests.support.services import scratch_database

HOSTILE = [
    "",
    "plain",
    "NULL",
    "null",
    'quote " inside',
    "back\\slash",
    "\\",
    '"',
    '\\"',
    "{braces}",
    "a,b",
    "  spaces  ",
    "new\nline\ttab",
    "'single'",
    "ünïcødé ✓ 日本",
    "}{\"\\,NULL",
]


def test_text_arrays_arrive_as_the_strings_and_nulls_they_hold(database_url: str) -> None:
    values: list[str | None] = [*HOSTILE, None, "after a null"]
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT %s::text[], %s::text[]",
                           (TextArray(values), TextArray([]))).fetchone()
    assert row == (values, [])


def test_uuid_arrays_arrive_as_the_uuids_they_hold(database_url: str) -> None:
    ids = [uuid4() for _ in range(3)]
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT %s::uuid[], %s::uuid[], cardinality(%s::uuid[])",
                           (UuidArray(ids), UuidArray([]), UuidArray([]))).fetchone()
    assert row == (ids, [], 0)


def test_a_nul_in_the_text_is_refused_before_it_is_sent(database_url: str) -> None:
    with psycopg.connect(database_url) as conn, pytest.raises(psycopg.DataError):
        conn.execute("SELECT %s::text[]", (TextArray(["a\x00b"]),))


def test_a_str_in_a_uuid_array_is_one_element_or_refused(database_url: str) -> None:
    a, b = uuid4(), uuid4()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT %s::uuid[]", (UuidArray([str(a)]),)).fetchone() == ([a],)
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            conn.execute("SELECT %s::uuid[]", (UuidArray([f"{a},{b}"]),))


@pytest.fixture(scope="module")
def event_type(database_url: str) -> Iterator[tuple[str, CompositeInfo]]:
    """A database with eventsourcing's composite type for an event, and its info."""
    with scratch_database(database_url) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TYPE stored_event_uuid AS (originator_id uuid, "
                         "originator_version bigint, topic text, state bytea)")
            info = CompositeInfo.fetch(conn, "stored_event_uuid")
        assert info is not None
        yield url, info


def test_events_arrive_as_the_fields_they_hold(event_type: tuple[str, CompositeInfo]) -> None:
    url, info = event_type
    first, second = uuid4(), uuid4()
    events = [
        StoredEvent(first, 1, "domain.session:LiveSession.Started", b'{"a": 1}'),
        StoredEvent(str(second), 2**40, "t\u00f6pic \"quoted\" \\ ✓", b""),
        StoredEvent(first, 2, "", bytes(range(256)) * 400),
    ]
    with psycopg.connect(url) as conn:
        register_composite(info, conn)
        rows = conn.execute(
            "SELECT e.originator_id, e.originator_version, e.topic, e.state "
            "FROM unnest(%b::stored_event_uuid[]) AS e",
            (EventRows(events, info),),
        ).fetchall()
        empty = conn.execute("SELECT cardinality(%b::stored_event_uuid[])",
                             (EventRows([], info),)).fetchone()
    assert rows == [(first, 1, events[0].topic, events[0].state),
                    (second, 2**40, events[1].topic, b""),
                    (first, 2, "", events[2].state)]
    assert empty == (0,)


def test_events_of_another_shape_are_refused_before_anything_is_sent(
    event_type: tuple[str, CompositeInfo],
) -> None:
    url, _ = event_type
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TYPE stored_event_text AS (originator_id text, "
                     "originator_version bigint, topic text, state bytea)")
        other = CompositeInfo.fetch(conn, "stored_event_text")
    assert other is not None
    with pytest.raises(ValueError, match="uuid, bigint, text, bytea"):
        EventRows([], other)
