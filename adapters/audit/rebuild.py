"""Provable rebuilds of the read models from the event store.

`rebuild` folds the whole history into a fresh table beside the live one, then, holding
the live table's lock only for the catch-up of events stored meanwhile, swaps them in one
transaction (readers and the projector wait milliseconds; nobody sees a half-built
model). Rows carry their aggregate version, so the projector, resuming on the new table,
skips what the rebuild already applied.

`check` compares the live rows with the history in one snapshot, tolerating only lag: a
live row at version v must equal the fold of its aggregate's first v events, every event
at or below the projection's watermark must be applied, and no row may exist without
events. Each model gets a row count and a SHA-256 digest of its canonical rows.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import msgspec
import psycopg
from psycopg import sql
from psycopg.rows import dict_row, tuple_row

from adapters.audit.fold import fold, normal
from adapters.audit.history import History, head
from adapters.projector.notices import announce_flush
from adapters.projector.runner import (
    PROJECTIONS,
    ProjectionSpec,
    projection_watermark,
    upsert_rows,
)
from adapters.relay.envelope import Envelope

SHADOW_SUFFIX = "__rebuild"
SWITCH_LOCK_TIMEOUT = "10s"
_encoder = msgspec.json.Encoder()


def digest(rows: Mapping[UUID, Any]) -> str:
    h = hashlib.sha256()
    for key in sorted(rows, key=str):
        h.update(str(key).encode() + b"\x00" + _encoder.encode(normal(rows[key])) + b"\n")
    return h.hexdigest()


@dataclass
class CheckReport:
    projection: str
    rows: int
    digest: str
    live_rows: int
    live_digest: str
    pending: int = 0  # stored after the watermark and not yet projected: lag, not a fault
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences and self.digest == self.live_digest

    def summary(self) -> dict[str, Any]:
        return {
            "projection": self.projection,
            "rows": self.rows,
            "digest": self.digest,
            "live_rows": self.live_rows,
            "live_digest": self.live_digest,
            "pending": self.pending,
            "differences": len(self.differences),
            "first_differences": self.differences[:5],
            "ok": self.ok,
        }


@dataclass
class RebuildReport:
    projection: str
    rows: int
    events: int
    seconds: float
    digest: str

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "projection": self.projection,
            "rows": self.rows,
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events_per_second),
            "digest": self.digest,
        }


def chosen(names: Iterable[str] | None) -> dict[str, ProjectionSpec[Any]]:
    wanted = list(names) if names else list(PROJECTIONS)
    unknown = [n for n in wanted if n not in PROJECTIONS]
    if unknown:
        raise ValueError(
            f"unknown projection(s) {', '.join(unknown)}; known: {', '.join(PROJECTIONS)}"
        )
    return {n: PROJECTIONS[n] for n in wanted}


def live_rows(conn: psycopg.Connection[Any], spec: ProjectionSpec[Any]) -> dict[UUID, Any]:
    query = sql.SQL("SELECT * FROM {}").format(sql.Identifier(spec.table))
    rows: dict[UUID, Any] = {}
    with conn.cursor(row_factory=dict_row) as cur:
        for row in cur.execute(query):
            key = row.pop(spec.key)
            rows[key] = msgspec.convert(row, spec.row_type)
    return rows


# ---- check ---------------------------------------------------------------------------


def check(
    conn: psycopg.Connection[Any], history: History, specs: Mapping[str, ProjectionSpec[Any]]
) -> list[CheckReport]:
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        live = {name: live_rows(conn, spec) for name, spec in specs.items()}
        marks = {name: projection_watermark(conn, name) for name in specs}
        envelopes = list(history.envelopes())
    return [
        _compare(name, spec, live[name], marks[name], envelopes)
        for name, spec in specs.items()
    ]


def _compare(
    name: str,
    spec: ProjectionSpec[Any],
    live: dict[UUID, Any],
    mark: int,
    envelopes: list[Envelope],
) -> CheckReport:
    limits = {key: row.version for key, row in live.items()}
    rebuilt = fold(spec, envelopes, limits=limits)
    # The version of each aggregate's last event the projection must already have applied.
    due: dict[UUID, int] = {}
    for e in envelopes:
        if e.aggregatetype == spec.aggregate_type and e.position <= mark:
            due[UUID(e.subject)] = e.aggregateversion
    differences, pending, compared = [], 0, {}
    for key in sorted(set(live) | set(rebuilt), key=str):
        mine, theirs = rebuilt.get(key), live.get(key)
        if theirs is None:
            if mine is not None and due.get(key, 0) >= 1:
                differences.append(f"{key}: missing from the live table")
                compared[key] = mine
            else:
                pending += 1
            continue
        if mine is None:
            differences.append(f"{key}: live row has no events behind it")
            continue
        compared[key] = mine
        if normal(mine) != normal(theirs):
            differences.append(f"{key}: live row differs from its events at version "
                               f"{theirs.version}")
        elif theirs.version < due.get(key, 0):
            differences.append(f"{key}: live row at version {theirs.version} skipped events "
                               f"up to version {due[key]}")
    return CheckReport(
        projection=name,
        rows=len(compared),
        digest=digest(compared),
        live_rows=len(live),
        live_digest=digest(live),
        pending=pending,
        differences=differences,
    )


# ---- rebuild and switch ----------------------------------------------------------------


def rebuild(
    conn: psycopg.Connection[Any], history: History, name: str, spec: ProjectionSpec[Any]
) -> RebuildReport:
    """Rebuild one read model into a fresh table and switch to it. `conn`: the owner's,
    in autocommit mode."""
    table, shadow = spec.table, spec.table + SHADOW_SUFFIX
    started = time.monotonic()
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(shadow)))
    conn.execute(
        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
            sql.Identifier(shadow), sql.Identifier(table)
        )
    )
    _copy_grants(conn, table, shadow)
    upto = head(conn)
    events = 0

    def counted(envelopes: Iterable[Envelope]) -> Iterable[Envelope]:
        nonlocal events
        for e in envelopes:
            events += 1
            yield e

    rows = fold(spec, counted(history.envelopes(0, upto)))
    with conn.transaction():
        upsert_rows(conn, spec, rows, shadow)
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{SWITCH_LOCK_TIMEOUT}'")
        conn.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(table))
        )
        # Events stored while the bulk was built: their rows, and only those, change.
        before = dict(rows)
        fold(spec, counted(history.envelopes(upto)), rows)
        upsert_rows(conn, spec, {k: v for k, v in rows.items() if before.get(k) is not v}, shadow)
        _swap(conn, table, shadow)
        if name == "quota":
            announce_flush(conn)  # the API's in-memory quota rows are of the old table
    return RebuildReport(
        projection=name,
        rows=len(rows),
        events=events,
        seconds=time.monotonic() - started,
        digest=digest(rows),
    )


def _indexes(conn: psycopg.Connection[Any], table: str) -> dict[str, str]:
    """Index definition (without its name and table) -> index name."""
    with conn.cursor(row_factory=tuple_row) as cur:
        found = cur.execute(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = current_schema() AND tablename = %s",
            (table,),
        ).fetchall()
    out: dict[str, str] = {}
    for index, definition in found:
        unique = definition.startswith("CREATE UNIQUE")
        out[f"{unique}:{definition.partition(' USING ')[2]}"] = index
    return out


def _copy_grants(conn: psycopg.Connection[Any], source: str, target: str) -> None:
    with conn.cursor(row_factory=tuple_row) as cur:
        grants = cur.execute(
            "SELECT grantee, privilege_type FROM information_schema.role_table_grants "
            "WHERE table_schema = current_schema() AND table_name = %s "
            "AND grantee <> current_user",
            (source,),
        ).fetchall()
    for grantee, privilege in grants:
        grantee_sql = sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee)
        conn.execute(
            sql.SQL("GRANT {} ON {} TO {}").format(
                sql.SQL(privilege), sql.Identifier(target), grantee_sql
            )
        )


def _swap(conn: psycopg.Connection[Any], table: str, shadow: str) -> None:
    """Drop the live table and give the shadow its name and its indexes' names."""
    live_indexes, shadow_indexes = _indexes(conn, table), _indexes(conn, shadow)
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    conn.execute(
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(shadow), sql.Identifier(table))
    )
    for definition, index in shadow_indexes.items():
        wanted = live_indexes.get(definition)
        if wanted and wanted != index:
            conn.execute(
                sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    sql.Identifier(index), sql.Identifier(wanted)
                )
            )
