"""The transcripts read model: one row per transcript, holding its entries, for the
caller's transcript list and the whole-transcript read."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from projections.stream import Event, Step, event_name, step, timestamp

AGGREGATE_TYPE = "Transcript"


class EntryRow(msgspec.Struct, frozen=True, kw_only=True):
    role: str
    text: str
    timestamp: str  # RFC 3339 UTC, as stored in the event
    interrupted: bool


class TranscriptRow(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    user_id: str
    session_id: str | None
    started_at: datetime
    ended_at: datetime | None
    created_at: datetime
    status: Literal["recording", "complete"]
    end_reason: str | None
    entry_count: int
    entries: tuple[EntryRow, ...]
    version: int
    position: int


def apply(row: TranscriptRow | None, event: Event) -> TranscriptRow | None:
    """The row after `event`, or None when the event does not change it (a duplicate, a
    gap, or another aggregate's event)."""
    if event.type.rpartition(".")[0] != f"xentree.live.{AGGREGATE_TYPE}":
        return None
    if step(row.version if row else None, event.aggregateversion) is not Step.APPLY:
        return None
    d, name = event.data, event_name(event)
    if row is None:
        if name != "Started":
            return None
        return TranscriptRow(
            tenant_id=d["tenant_id"],
            user_id=d["user_id"],
            session_id=d["session_id"],
            started_at=timestamp(d["started_at"]),
            ended_at=None,
            created_at=timestamp(d["created_at"]),
            status="recording",
            end_reason=None,
            entry_count=0,
            entries=(),
            version=event.aggregateversion,
            position=event.position,
        )
    tracked = msgspec.structs.replace(row, version=event.aggregateversion, position=event.position)
    if name == "EntriesAppended":
        added = tuple(msgspec.convert(e, EntryRow) for e in d["entries"])
        return msgspec.structs.replace(
            tracked, entries=row.entries + added, entry_count=row.entry_count + len(added)
        )
    if name == "Finalised":
        return msgspec.structs.replace(
            tracked,
            ended_at=timestamp(d["ended_at"]),
            end_reason=d["end_reason"],
            status="complete",
        )
    return tracked
