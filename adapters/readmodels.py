"""Queries over the read models, for the HTTP API. Each answer pairs with `watermark`, the
position every applied event is at or below, which the API reports as `as_of`."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

from adapters.projector.runner import projection_watermark

SESSION_COLUMNS = (
    "session_id, tenant_id, user_id, session_type, started_at, ended_at, end_reason, "
    "session_seconds, last_billed_at, version, position"
)


def quota_row(
    conn: psycopg.Connection[Any], tenant_id: str, user_id: str, period_start: datetime
) -> dict[str, Any] | None:
    """The user's quota row for the period starting at `period_start` (None before their
    first session of the period)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT ledger_id, tenant_id, user_id, period_start, period_end, plan, "
            "limit_seconds, used_seconds, max_session_seconds, active, version, position "
            "FROM rm_quota WHERE tenant_id = %s AND user_id = %s AND period_start = %s",
            (tenant_id, user_id, period_start),
        )
        return cur.fetchone()


def session_rows(
    conn: psycopg.Connection[Any],
    tenant_id: str,
    user_id: str,
    limit: int,
    before: tuple[datetime, str] | None = None,
) -> list[dict[str, Any]]:
    """The user's sessions, newest first; `before` is the (started_at, session_id) of the
    last row of the previous page."""
    after_id = None
    if before is not None:
        try:
            after_id = UUID(before[1])
        except ValueError:
            return []
    with conn.cursor(row_factory=dict_row) as cur:
        if before is None or after_id is None:
            cur.execute(
                f"SELECT {SESSION_COLUMNS} FROM rm_sessions "  # noqa: S608 - constant columns
                "WHERE tenant_id = %s AND user_id = %s "
                "ORDER BY started_at DESC, session_id DESC LIMIT %s",
                (tenant_id, user_id, limit),
            )
        else:
            cur.execute(
                f"SELECT {SESSION_COLUMNS} FROM rm_sessions "  # noqa: S608 - constant columns
                "WHERE tenant_id = %s AND user_id = %s AND (started_at, session_id) < (%s, %s) "
                "ORDER BY started_at DESC, session_id DESC LIMIT %s",
                (tenant_id, user_id, before[0], after_id, limit),
            )
        return cur.fetchall()


def session_row(
    conn: psycopg.Connection[Any], tenant_id: str, user_id: str, session_id: str
) -> dict[str, Any] | None:
    """One of the user's sessions; None if unknown or another user's."""
    try:
        sid = UUID(session_id)
    except ValueError:
        return None
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT {SESSION_COLUMNS} FROM rm_sessions "  # noqa: S608 - constant columns
            "WHERE session_id = %s AND tenant_id = %s AND user_id = %s",
            (sid, tenant_id, user_id),
        )
        return cur.fetchone()


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
    before: tuple[datetime, UUID] | None = None,
) -> list[dict[str, Any]]:
    """The user's transcripts without their entries, newest conversation first (by
    `started_at`, then id); `since` <= started_at <= `until`; `before` is the
    (started_at, transcript_id) of the last row of the previous page."""
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
        clauses.append("(started_at, transcript_id) < (%s, %s)")
        params.extend(before)
    params.append(limit)
    query = (
        f"SELECT {TRANSCRIPT_SUMMARY_COLUMNS} FROM rm_transcripts "  # noqa: S608 - constants
        f"WHERE {' AND '.join(clauses)} "
        "ORDER BY started_at DESC, transcript_id DESC LIMIT %s"
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
