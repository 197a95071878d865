"""What commands answer: plain Structs, separate from domain events."""

from __future__ import annotations

from datetime import datetime

import msgspec


class SessionStarted(msgspec.Struct, kw_only=True):
    session_id: str
    session_type: str
    started_at: datetime
    heartbeat_interval_seconds: int
    idle_timeout_seconds: int
    remaining_seconds: int
    session_ends_at: datetime
    period_end: datetime
    realtime_url: str


class HeartbeatAccepted(msgspec.Struct, kw_only=True):
    session_id: str
    billed_seconds: int
    session_seconds: int
    remaining_seconds: int
    session_ends_at: datetime


class SessionEnded(msgspec.Struct, kw_only=True):
    session_id: str
    ended_at: datetime
    end_reason: str
    session_seconds: int
    remaining_seconds: int


class PlanAssigned(msgspec.Struct, kw_only=True):
    tenant_id: str
    user_id: str
    plan: str
    limit_seconds: int
    max_session_seconds: int


class ApiKeyIssued(msgspec.Struct, kw_only=True):
    key_id: str
    key: str
    name: str
    scopes: list[str]
    created_at: datetime


class ApiKeyInfo(msgspec.Struct, kw_only=True):
    key_id: str
    name: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None = None


class Answer(msgspec.Struct, frozen=True):
    """A command's answer as it will be sent (and replayed): status, JSON body, and the
    position of its last event (None when it wrote nothing)."""

    status: int
    body: bytes
    position: int | None


class Profile(msgspec.Struct, kw_only=True):
    user_id: str
    tenant_id: str
    nickname: str | None
    plan: str


class TranscriptStored(msgspec.Struct, kw_only=True):
    transcript_id: str
    session_id: str | None
    entry_count: int
    created_at: datetime
