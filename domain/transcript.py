"""A conversation's transcript: started, appended to in batches, finalised once.

A transcript posted whole is stored the same way as one recorded line by line during a
live session: a Started event, then EntriesAppended events of at most BATCH_ENTRIES
entries (and about BATCH_BYTES of text) each, so no single event grows with the length
of the conversation, then Finalised. The live transcript of a session has an id derived
from the session id, so whoever holds the session id can append to it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.domain import Aggregate, event

from domain import ids
from domain.errors import InvalidValue

ROLES: tuple[str, ...] = ("user", "ai")
MAX_TEXT = 10_000
MAX_ENTRIES = 5_000
BATCH_ENTRIES = 500
# Keeps every event (and so every Kafka message) far below the brokers' 1 MiB default.
BATCH_BYTES = 256 * 1024
FIELD = "transcripts"

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
# Text may hold line breaks and tabs; other C0/C1 controls and NUL (which PostgreSQL's
# jsonb cannot store) are refused, as are lone surrogates (not encodable as UTF-8).
_REFUSED_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


class RawEntry(msgspec.Struct, frozen=True, kw_only=True):
    """An entry as a client sent it, before validation."""

    role: str
    text: str
    timestamp: str
    interrupted: bool = False


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    role: str
    text: str
    timestamp: datetime
    interrupted: bool = False

    def as_data(self) -> dict[str, Any]:
        """The entry as stored in events: plain JSON values, the time as RFC 3339 UTC."""
        return {
            "role": self.role,
            "text": self.text,
            "timestamp": format_timestamp(self.timestamp),
            "interrupted": self.interrupted,
        }


def format_timestamp(at: datetime) -> str:
    text = at.astimezone(UTC).isoformat()
    return text.removesuffix("+00:00") + "Z"


def parse_timestamp(value: str, field: str) -> datetime:
    """An RFC 3339 timestamp with an offset, as an aware UTC datetime."""
    if not _RFC3339.match(value):
        raise InvalidValue(field, "must be an RFC 3339 timestamp with a UTC offset")
    fraction = re.search(r"\.(\d+)", value)
    if fraction and len(fraction.group(1)) > 6:  # Python keeps microseconds
        value = value.replace(fraction.group(0), fraction.group(0)[:7], 1)
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
    except ValueError:
        raise InvalidValue(field, "must be a valid RFC 3339 date and time") from None
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise InvalidValue(field, "is outside the years 1-9999 in UTC") from None


def check_entry(raw: RawEntry, field: str, previous: datetime | None) -> Entry:
    if raw.role not in ROLES:
        raise InvalidValue(f"{field}.role", "must be 'user' or 'ai'")
    if not 1 <= len(raw.text) <= MAX_TEXT:
        raise InvalidValue(f"{field}.text", f"must be 1-{MAX_TEXT} characters")
    if not raw.text.strip():
        raise InvalidValue(f"{field}.text", "must not be only whitespace")
    bad = _REFUSED_TEXT.search(raw.text)
    if bad:
        raise InvalidValue(
            f"{field}.text", f"must not contain control character U+{ord(bad.group()):04X}"
        )
    at = parse_timestamp(raw.timestamp, f"{field}.timestamp")
    if previous is not None and at < previous:
        raise InvalidValue(f"{field}.timestamp", "is earlier than the entry before it")
    return Entry(role=raw.role, text=raw.text, timestamp=at, interrupted=raw.interrupted)


def check_entries(
    raws: Sequence[RawEntry], *, first_index: int = 0, previous: datetime | None = None
) -> list[Entry]:
    """Validated entries, in time order after `previous`; errors name the entry's index."""
    if first_index + len(raws) > MAX_ENTRIES:
        raise InvalidValue(FIELD, f"at most {MAX_ENTRIES} entries per transcript")
    entries: list[Entry] = []
    for offset, raw in enumerate(raws):
        entry = check_entry(raw, f"{FIELD}[{first_index + offset}]", previous)
        entries.append(entry)
        previous = entry.timestamp
    return entries


def check_period(started_at: datetime, ended_at: datetime | None) -> None:
    if ended_at is not None and ended_at < started_at:
        raise InvalidValue("session_ended_at", "must not be before session_started_at")


def batches(entries: Sequence[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Stored entries in runs of at most BATCH_ENTRIES and about BATCH_BYTES each."""
    batch: list[dict[str, Any]] = []
    size = 0
    for entry in entries:
        entry_size = len(entry["text"]) * 4 + 96  # an upper bound of its encoded size
        if batch and (len(batch) >= BATCH_ENTRIES or size + entry_size > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += entry_size
    if batch:
        yield batch


class TranscriptFinalised(InvalidValue):
    """Lines arrived for a transcript that was already finalised."""

    def __init__(self) -> None:
        super().__init__(FIELD, "the transcript is already finalised")


class Transcript(Aggregate):
    @staticmethod
    def live_id(session_id: UUID | str) -> UUID:
        return ids.live_transcript_id(str(session_id))

    @event("Started")
    def __init__(
        self,
        *,
        id: UUID,
        tenant_id: str,
        user_id: str,
        session_id: str | None,
        started_at: datetime,
        created_at: datetime,
        live: bool,
    ) -> None:
        self.tenant_id = tenant_id
        self.user_id = user_id
        self.session_id = session_id
        self.started_at = started_at
        self.created_at = created_at
        self.live = live
        self.entries: list[dict[str, Any]] = []
        self.ended_at: datetime | None = None
        self.end_reason: str | None = None

    @property
    def is_final(self) -> bool:
        return self.ended_at is not None

    def owned_by(self, tenant_id: str, user_id: str) -> bool:
        return self.tenant_id == tenant_id and self.user_id == user_id

    @property
    def last_timestamp(self) -> datetime | None:
        if not self.entries:
            return None
        return datetime.fromisoformat(self.entries[-1]["timestamp"])

    def append(self, raws: Sequence[RawEntry]) -> list[Entry]:
        """Validate and record entries after the ones already stored."""
        if self.is_final:
            raise TranscriptFinalised()
        entries = check_entries(
            raws, first_index=len(self.entries), previous=self.last_timestamp
        )
        for batch in batches([e.as_data() for e in entries]):
            self._entries_appended(entries=batch)
        return entries

    @event("EntriesAppended")
    def _entries_appended(self, *, entries: list[dict[str, Any]]) -> None:
        self.entries.extend(entries)

    def finalise(self, ended_at: datetime, end_reason: str | None) -> None:
        """Close the transcript (once: a second finalise changes nothing)."""
        if self.is_final:
            return
        check_period(self.started_at, ended_at)
        self._finalised(ended_at=ended_at, end_reason=end_reason)

    @event("Finalised")
    def _finalised(self, *, ended_at: datetime, end_reason: str | None) -> None:
        self.ended_at = ended_at
        self.end_reason = end_reason
