"""The database schema: eventsourcing's event table, plus the tables that commit with
events (idempotency, write-side indexes) and the read models the projections keep.

`migrate` is idempotent and safe to run from several processes at once (an advisory lock
serialises it)."""

from __future__ import annotations

import psycopg

from application.settings import Settings, parse_database_url

MIGRATION_LOCK = 7_241_117

TABLES = """
CREATE TABLE IF NOT EXISTS idempotency (
    owner text NOT NULL,
    key text NOT NULL,
    fingerprint text NOT NULL,
    status integer NOT NULL,
    body bytea NOT NULL,
    position bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, key)
);
CREATE TABLE IF NOT EXISTS active_sessions (
    session_id uuid PRIMARY KEY,
    since timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS api_keys (
    aggregate_id uuid PRIMARY KEY,
    key_id text NOT NULL UNIQUE,
    key_hash text NOT NULL UNIQUE,
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    name text NOT NULL,
    scopes text NOT NULL,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX IF NOT EXISTS api_keys_owner ON api_keys (tenant_id, user_id, created_at DESC);

-- The relay's progress through the notification log, and the topic it published to.
CREATE TABLE IF NOT EXISTS relay_position (
    topic text PRIMARY KEY,
    position bigint NOT NULL,
    topic_id text,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Each projection's watermark per partition: every event at or below `position` on that
-- partition has been applied. The projection's as_of is the minimum over partitions.
CREATE TABLE IF NOT EXISTS projection_partitions (
    projection text NOT NULL,
    partition integer NOT NULL,
    position bigint NOT NULL DEFAULT 0,
    kafka_offset bigint NOT NULL DEFAULT -1,
    topic_id text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, partition)
);

CREATE TABLE IF NOT EXISTS rm_quota (
    ledger_id uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    period_start timestamptz NOT NULL,
    period_end timestamptz NOT NULL,
    plan text NOT NULL,
    limit_seconds bigint NOT NULL,
    used_seconds bigint NOT NULL,
    max_session_seconds bigint NOT NULL,
    active jsonb NOT NULL DEFAULT '[]',
    version bigint NOT NULL,
    position bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS rm_quota_owner ON rm_quota (tenant_id, user_id, period_start);

CREATE TABLE IF NOT EXISTS rm_sessions (
    session_id uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    session_type text NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at timestamptz,
    end_reason text,
    session_seconds bigint NOT NULL DEFAULT 0,
    last_billed_at timestamptz,
    version bigint NOT NULL,
    position bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS rm_sessions_owner
    ON rm_sessions (tenant_id, user_id, started_at DESC, session_id DESC);
"""


def infrastructure_env(settings: Settings, *, create_table: bool = False) -> dict[str, str]:
    """The environment eventsourcing's factory reads, from our settings."""
    db = parse_database_url(settings.database_url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "APPLICATION_RECORDER_TOPIC": "adapters.eventstore.recorder:LiveRecorder",
        "POSTGRES_DBNAME": db.dbname,
        "POSTGRES_HOST": db.host,
        "POSTGRES_PORT": str(db.port),
        "POSTGRES_USER": db.user,
        "POSTGRES_PASSWORD": db.password,
        "POSTGRES_POOL_SIZE": str(settings.db_pool_size),
        "POSTGRES_MAX_OVERFLOW": str(settings.db_max_overflow),
        "POSTGRES_CONNECT_TIMEOUT": "5",
        "POSTGRES_LOCK_TIMEOUT": "5",
        "POSTGRES_PRE_PING": "y",
        "POSTGRES_MAX_WAITING": "64",
        "CREATE_TABLE": "yes" if create_table else "no",
    }


def migrate(settings: Settings) -> None:
    """Create every table (idempotent)."""
    from adapters.bootstrap import build_application

    conninfo = parse_database_url(settings.database_url).conninfo()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            app = build_application(settings, create_table=True)
            app.close()
            with conn.transaction():
                conn.execute(TABLES)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
