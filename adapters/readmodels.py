"""Queries over the read models, for the HTTP API. Each answer pairs with `watermark`, the
position every applied event is at or below, which the API reports as `as_of`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

from adapters.projector.runner import WATERMARK, projection_watermark

SESSION_COLUMNS = (
    "session_id, tenant_id, user_id, session_type, started_at, ended_at, end_reason, "
    "session_seconds, last_billed_at, version, position"
)


QUOTA_COLUMNS = (
    "ledger_id, tenant_id, user_id, period_start, period_end, plan, limit_seconds, "
    "used_seconds, max_session_seconds, active, version, position"
)
# The row and the watermark it reflects, read in one statement (one snapshot). The row is
# the user's latest ledger up to the period: an earlier period's when this one has none yet,
# which still tells the plan they are on (plans carry over; assigning one updates the
# current period's ledger).
QUOTA_WITH_WATERMARK = (
    "SELECT w.partitions, w.mark, q.* FROM (SELECT count(*) AS partitions, "  # noqa: S608
    "coalesce(min(position), 0) AS mark FROM projection_partitions "
    "WHERE projection = 'quota') w "
    f"LEFT JOIN (SELECT {QUOTA_COLUMNS} FROM rm_quota "
    "WHERE tenant_id = %s AND user_id = %s AND period_start <= %s "
    "ORDER BY period_start DESC LIMIT 1) q ON true"
)


async def quota_with_watermark(
    conn: psycopg.AsyncConnection[Any], tenant_id: str, user_id: str, period_start: datetime
) -> tuple[int, dict[str, Any] | None]:
    """The quota projection's watermark and the user's latest row up to the period starting
    at `period_start` (an earlier period's before their first session of this one; None
    before their first ever)."""
    cur = await conn.execute(
        QUOTA_WITH_WATERMARK, (tenant_id, user_id, period_start), prepare=True
    )
    row: dict[str, Any] | None = await cur.fetchone()
    assert row is not None
    mark = int(row.pop("mark")) if row.pop("partitions") else 0
    return mark, row if row["ledger_id"] is not None else None


async def async_watermark(conn: psycopg.AsyncConnection[Any], projection: str) -> int:
    cur = await conn.execute(WATERMARK, (projection,), prepare=True)
    row = await cur.fetchone()
    assert row is not None
    return int(row["mark"]) if row["partitions"] else 0


def quota_row(
    conn: psycopg.Connection[Any], tenant_id: str, user_id: str, period_start: datetime
) -> dict[str, Any] | None:
    """The user's quota row for the period starting at `period_start` (None before their
    first session of the period)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT {QUOTA_COLUMNS} FROM rm_quota "  # noqa: S608 - constant columns
            "WHERE tenant_id = %s AND user_id = %s AND period_start = %s",
            (tenant_id, user_id, period_start),
        )
        return cur.fetchone()


@dataclass(frozen=True, slots=True)
class Query:
    """A read-model query, run by `fetch_all`/`fetch_one` or their async twins."""

    sql: str
    params: tuple[Any, ...]


def fetch_all(conn: psycopg.Connection[Any], query: Query | None) -> list[dict[str, Any]]:
    if query is None:
        return []
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query.sql, query.params)
        return cur.fetchall()


def fetch_one(conn: psycopg.Connection[Any], query: Query | None) -> dict[str, Any] | None:
    rows = fetch_all(conn, query)
    return rows[0] if rows else None


async def afetch_all(
    conn: psycopg.AsyncConnection[Any], query: Query | None
) -> list[dict[str, Any]]:
    if query is None:
        return []
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query.sql, query.params, prepare=True)
        return await cur.fetchall()


async def afetch_one(
    conn: psycopg.AsyncConnection[Any], query: Query | None
) -> dict[str, Any] | None:
    rows = await afetch_all(conn, query)
    return rows[0] if rows else None


def sessions_query(
    tenant_id: str, user_id: str, limit: int, before: tuple[datetime, str] | None = None
) -> Query | None:
    """The user's sessions, newest first; `before` is the (started_at, session_id) of the
    last row of the previous page. None: there can be no rows."""
    if before is None:
        return Query(
            f"SELECT {SESSION_COLUMNS} FROM rm_sessions "  # noqa: S608 - constant columns
            "WHERE tenant_id = %s AND user_id = %s "
            "ORDER BY started_at DESC, session_id DESC LIMIT %s",
            (tenant_id, user_id, limit),
        )
    try:
        after_id = UUID(before[1])
    except ValueError:
        return None
    return Query(
        f"SELECT {SESSION_COLUMNS} FROM rm_sessions "  # noqa: S608 - constant columns
        "WHERE tenant_id = %s AND user_id = %s AND (started_at, session_id) < (%s, %s) "
        "ORDER BY started_at DESC, session_id DESC LIMIT %s",
        (tenant_id, user_id, before[0], after_id, limit),
    )


def session_query(tenant_id: str, user_id: str, session_id: str) -> Query | None:
    """One of the user's sessions (no row if unknown or another user's)."""
    try:
        sid = UUID(session_id)
    except ValueError:
        return None
    return Query(
        f"SELECT {SESSION_COLUMNS} FROM rm_sessions "  # noqa: S608 - constant columns
        "WHERE session_id = %s AND tenant_id = %s AND user_id = %s",
        (sid, tenant_id, user_id),
    )


def session_rows(
    conn: psycopg.Connection[Any],
    tenant_id: str,
    user_id: str,
    limit: int,
    before: tuple[datetime, str] | None = None,
) -> list[dict[str, Any]]:
    return fetch_all(conn, sessions_query(tenant_id, user_id, limit, before))


def session_row(
    conn: psycopg.Connection[Any], tenant_id: str, user_id: str, session_id: str
) -> dict[str, Any] | None:
    return fetch_one(conn, session_query(tenant_id, user_id, session_id))


def watermark(conn: psycopg.Connection[Any], projection: str) -> int:
    return projection_watermark(conn, projection)


def profile_row(
    conn: psycopg.Connection[Any], tenant_id: str, user_id: str
) -> dict[str, Any] | None:
    """The user's profile row (None until their account's first event is projected)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT tenant_id, user_id, nickname, plan, version, position FROM rm_profile "
            "WHERE tenant_id = %s AND user_id = %s",
            (tenant_id, user_id),
        )
        return cur.fetchone()


TRANSCRIPT_SUMMARY_COLUMNS = (
    "transcript_id, session_id, started_at, ended_at, created_at, status, end_reason, "
    "entry_count"
)


def transcript_rows(
    conn: psycopg.Connection[Any],
    tenant_id: str,
    user_id: str,
    limit: int,
    *,
    session_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: tuple[datetime, datetime, UUID] | None = None,
) -> list[dict[str, Any]]:
    """The user's transcripts without their entries, newest conversation first (by
    `started_at`; of those that started together, the one stored last first);
    `since` <= started_at <= `until`; `before` is the (started_at, created_at,
    transcript_id) of the last row of the previous page."""
    clauses = ["tenant_id = %s", "user_id = %s"]
    params: list[Any] = [tenant_id, user_id]
    if session_id is not None:
        clauses.append("session_id = %s")
        params.append(session_id)
    if since is not None:
        clauses.append("started_at >= %s")
        params.append(since)
    if until is not None:
        clauses.append("started_at <= %s")
        params.append(until)
    if before is not None:
        clauses.append("(started_at, created_at, transcript_id) < (%s, %s, %s)")
        params.extend(before)
    params.append(limit)
    query = (
        f"SELECT {TRANSCRIPT_SUMMARY_COLUMNS} FROM rm_transcripts "  # noqa: S608 - constants
        f"WHERE {' AND '.join(clauses)} "
        "ORDER BY started_at DESC, created_at DESC, transcript_id DESC LIMIT %s"
    )
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


def transcript_row(
    conn: psycopg.Connection[Any], tenant_id: str, user_id: str, transcript_id: str
) -> dict[str, Any] | None:
    """One of the user's transcripts with its entries as JSON text (passed through to the
    answer undecoded); None if unknown or another user's."""
    try:
        tid = UUID(transcript_id)
    except ValueError:
        return None
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT {TRANSCRIPT_SUMMARY_COLUMNS}, entries::text AS entries "  # noqa: S608
            "FROM rm_transcripts WHERE transcript_id = %s AND tenant_id = %s AND user_id = %s",
            (tid, tenant_id, user_id),
        )
        return cur.fetchone()
