"""The append call's array arguments (TextArray, UuidArray) reach PostgreSQL as the values
they hold, whatever the text: psycopg sends them as array literals we write ourselves."""

from __future__ import annotations

from uuid import uuid4

import psycopg
import pytest

from adapters.eventstore.append import TextArray, UuidArray

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
