"""History that cannot be changed: the event table and its hash chain refuse UPDATE,
DELETE and TRUNCATE (triggers, for every role including the owner), and the application
role may only read and append to them (privileges).

Schema setup (`migrate`) runs as the owner. Application processes switch to the role
named by XENTREE_DATABASE_ROLE on connect (`-c role=...`), which may only SELECT history
and ordinary DML on everything derived. It appends through `xentree_append`
(adapters/eventstore/append.py), a SECURITY DEFINER function that can do nothing but
append: it serialises writers and chains every event.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

SCHEMA = "public"
EVENTS_TABLE = "xentree_live_events"
CHAIN_TABLE = "event_chain"
HISTORY_TABLES = (EVENTS_TABLE, CHAIN_TABLE)

CHAIN_DDL = f"""
CREATE TABLE IF NOT EXISTS {CHAIN_TABLE} (
    position bigint PRIMARY KEY,
    hash bytea NOT NULL
);
"""

TRIGGERS = """
CREATE OR REPLACE FUNCTION xentree_refuse_history_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'history is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;
"""


def _trigger_statements(table: str) -> list[sql.Composed]:
    name = sql.Identifier(f"{table}_append_only")
    return [
        sql.SQL(
            "CREATE OR REPLACE TRIGGER {} BEFORE UPDATE OR DELETE OR TRUNCATE ON {} "
            "FOR EACH STATEMENT EXECUTE FUNCTION xentree_refuse_history_change()"
        ).format(name, sql.Identifier(table)),
    ]


def secure_history(conn: psycopg.Connection[Any], role: str) -> None:
    """Create the chain table, the triggers and (when `role` is set) the application role
    with its privileges. Idempotent; run by `migrate` as the owner, in its transaction."""
    conn.execute(CHAIN_DDL)
    conn.execute(TRIGGERS)
    for table in HISTORY_TABLES:
        for statement in _trigger_statements(table):
            conn.execute(statement)
    if role:
        _grant(conn, role)


def _grant(conn: psycopg.Connection[Any], role: str) -> None:
    ident = sql.Identifier(role)
    # Roles are shared by every database of the server, and migrations of two databases
    # do not share an advisory lock: a concurrent creation is as good as our own.
    conn.execute(
        sql.SQL(
            "DO $$ BEGIN "
            "IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {name}) THEN "
            "CREATE ROLE {role} NOLOGIN; END IF; "
            "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        ).format(name=sql.Literal(role), role=ident)
    )
    row = conn.execute(
        "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    if not (row and row[0]):
        # A non-superuser owner may switch only to roles it is a member of.
        conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(ident))
    schema = sql.Identifier(SCHEMA)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, ident))
    conn.execute(
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO {}").format(
            schema, ident
        )
    )
    conn.execute(
        sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(schema, ident)
    )
    # Tables the owner creates later (rebuilt read models) are the role's to write too.
    conn.execute(
        sql.SQL(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA {} "
            "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}"
        ).format(schema, ident)
    )
    for table in HISTORY_TABLES:
        # Not even INSERT: the role appends only through xentree_append, which chains
        # every event; a row of its own (say, a forged link) is impossible.
        conn.execute(
            sql.SQL("REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {} FROM {}").format(
                sql.Identifier(table), ident
            )
        )
