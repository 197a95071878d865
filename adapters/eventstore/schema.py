"""The database schema: eventsourcing's event table, plus the tables that commit with
events (idempotency, write-side indexes) and the read models the projections keep.

`migrate` is idempotent and safe to run from several processes at once (an advisory lock
serialises it). It runs as the owner (the URL's user, without the switch to the
application role) and makes history append-only (adapters/eventstore/history.py)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import msgspec
import psycopg

from adapters.eventstore import append
from adapters.eventstore.chain import backfill
from adapters.eventstore.history import secure_history
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

-- Which credential started each active session, so revoking a token ends its sessions.
ALTER TABLE active_sessions ADD COLUMN IF NOT EXISTS credential text;
ALTER TABLE active_sessions ADD COLUMN IF NOT EXISTS credential_id text;
CREATE INDEX IF NOT EXISTS active_sessions_credential ON active_sessions (credential_id);

-- Integration tokens, written with their events (adapters/eventstore/integration_index.py).
CREATE TABLE IF NOT EXISTS signing_keys (
    aggregate_id uuid PRIMARY KEY,
    kid text NOT NULL UNIQUE,
    tenant_id text NOT NULL,
    algorithm text NOT NULL,
    public_jwk jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    published_until timestamptz,
    retired_at timestamptz
);
CREATE INDEX IF NOT EXISTS signing_keys_tenant ON signing_keys (tenant_id, created_at);
-- Private halves, AES-GCM sealed under the master key; written by the key vault before
-- the key's Created event (which names the kid, never the key) is saved.
CREATE TABLE IF NOT EXISTS signing_keys_private (
    kid text PRIMARY KEY,
    tenant_id text NOT NULL,
    sealed bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS integration_tenants (
    aggregate_id uuid PRIMARY KEY,
    tenant_id text NOT NULL UNIQUE,
    current_kid text,
    revoked_before timestamptz
);
CREATE TABLE IF NOT EXISTS integration_grants (
    grant_id uuid PRIMARY KEY,
    jti text NOT NULL UNIQUE,
    tenant_id text NOT NULL,
    subject text NOT NULL,
    kid text NOT NULL,
    issued_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS integration_grants_tenant ON integration_grants (tenant_id, issued_at);
CREATE TABLE IF NOT EXISTS revoked_tokens (
    jti text PRIMARY KEY,
    tenant_id text NOT NULL,
    revoked_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    reason text NOT NULL
);
-- Per-tenant, per-endpoint request counters in fixed windows, shared by every API process.
CREATE UNLOGGED TABLE IF NOT EXISTS rate_limit_counters (
    tenant_id text NOT NULL,
    endpoint text NOT NULL,
    window_start timestamptz NOT NULL,
    hits integer NOT NULL,
    PRIMARY KEY (tenant_id, endpoint, window_start)
);
-- The jti-revocation read model, fed from Kafka: one row per grant.
CREATE TABLE IF NOT EXISTS rm_revocations (
    grant_id uuid PRIMARY KEY,
    jti text NOT NULL,
    tenant_id text NOT NULL,
    issued_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    reason text,
    version bigint NOT NULL,
    position bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS rm_revocations_jti ON rm_revocations (jti);
CREATE TABLE IF NOT EXISTS rm_revocation_cutoffs (
    tenant_aggregate uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    revoked_before timestamptz,
    version bigint NOT NULL,
    position bigint NOT NULL
);

-- The relay's progress through the notification log, and the topic it published to.
CREATE TABLE IF NOT EXISTS relay_position (
    topic text PRIMARY KEY,
    position bigint NOT NULL,
    topic_id text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- The last position published to each partition ({"partition": position}), written with
-- `position` in one statement: a projector that has applied a partition's last event has
-- applied all of that partition's events up to `position`, with no broker round trip.
-- NULL (a row from before this column) means not known, until the relay starts over.
ALTER TABLE relay_position ADD COLUMN IF NOT EXISTS partition_positions jsonb;

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
-- The position up to which every message of the partition of topic `topic_id` has been
-- read, by the relay's links between messages (see adapters/projector/runner.py).
ALTER TABLE projection_partitions ADD COLUMN IF NOT EXISTS chain bigint NOT NULL DEFAULT 0;

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

CREATE TABLE IF NOT EXISTS rm_profile (
    account_id uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    nickname text,
    plan text,
    version bigint NOT NULL,
    position bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS rm_profile_owner ON rm_profile (tenant_id, user_id);

CREATE TABLE IF NOT EXISTS rm_transcripts (
    transcript_id uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    session_id text,
    started_at timestamptz NOT NULL,
    ended_at timestamptz,
    created_at timestamptz NOT NULL,
    status text NOT NULL,
    end_reason text,
    entry_count integer NOT NULL,
    entries jsonb NOT NULL DEFAULT '[]',
    version bigint NOT NULL,
    position bigint NOT NULL
);
-- Newest conversation first; of conversations that started at the same time, the one
-- stored last first (the list's order and its cursor's key).
DROP INDEX IF EXISTS rm_transcripts_owner;
CREATE INDEX IF NOT EXISTS rm_transcripts_newest
    ON rm_transcripts (tenant_id, user_id, started_at DESC, created_at DESC, transcript_id DESC);
CREATE INDEX IF NOT EXISTS rm_transcripts_session
    ON rm_transcripts (tenant_id, user_id, session_id);
-- Live transcripts still recording: the reaper looks for ones whose session has ended.
CREATE INDEX IF NOT EXISTS rm_transcripts_recording
    ON rm_transcripts (session_id) WHERE status = 'recording';
"""


def infrastructure_env(settings: Settings, *, create_table: bool = False) -> dict[str, str]:
    """The environment eventsourcing's factory reads, from our settings."""
    db = parse_database_url(settings.database_url)
    return {
        "PERSISTENCE_MODULE": "adapters.eventstore.factory",
        "POSTGRES_OPTIONS": db.options,
        "APPLICATION_RECORDER_TOPIC": "adapters.eventstore.recorder:LiveRecorder",
        "POSTGRES_DBNAME": db.dbname,
        "POSTGRES_HOST": db.host,
        "POSTGRES_PORT": str(db.port),
        "POSTGRES_USER": db.user,
        "POSTGRES_PASSWORD": db.password,
        "POSTGRES_POOL_SIZE": str(settings.db_pool_size),
        "POSTGRES_MAX_OVERFLOW": str(settings.db_max_overflow),
        # Bounds how long a command waits for a connection while PostgreSQL is down (the
        # library retries ten times), before the API answers 503.
        "POSTGRES_CONNECT_TIMEOUT": "1",
        "POSTGRES_LOCK_TIMEOUT": "5",
        # No ping before each checkout (a round trip per command): a connection broken by
        # a database restart fails its statement, and the library retries on a fresh one.
        "POSTGRES_PRE_PING": "n",
        "POSTGRES_MAX_WAITING": "64",
        # Aggregates stay in memory and are fast-forwarded with only their newer events
        # on each load (one small query instead of snapshot + events); concurrent writers
        # in other processes are still caught by optimistic concurrency on save.
        "AGGREGATE_CACHE_MAXSIZE": "10000",
        "AGGREGATE_CACHE_FASTFORWARD": "y",
        "CREATE_TABLE": "yes" if create_table else "no",
    }


def owner_url(url: str) -> str:
    """`url` without the switch to the application role: the schema owner's connection."""
    return urlunsplit(urlsplit(url)._replace(query=""))


def migrate(settings: Settings) -> None:
    """Create every table (idempotent)."""
    from adapters.bootstrap import build_application

    db = parse_database_url(settings.database_url)
    owner = msgspec.structs.replace(settings, database_url=owner_url(settings.database_url))
    with psycopg.connect(db.as_owner().conninfo(), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            app = build_application(owner, create_table=True)
            app.close()
            with conn.transaction():
                conn.execute(TABLES)
            with conn.transaction():
                secure_history(conn, db.role)
                append.install(conn, db.role)
                backfill(conn)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
