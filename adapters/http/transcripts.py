"""Transcripts: stored whole by POST (bearer or service key), read from the transcripts
projection as pages of summaries or one whole transcript."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.exceptions import ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter

from adapters.auth.scopes import LIVE_READ, LIVE_WRITE
from adapters.http import cursor as cursors
from adapters.http.auth import NOT_API_KEY, guarded, principal_of
from adapters.http.bodies import invalid_body, strict
from adapters.http.commands import (
    idempotency,
    in_command_thread,
    in_thread,
    min_position,
    respond,
    services_of,
)
from adapters.http.problems import BadRequest
from adapters.http.schemas import READ_PROBLEMS, TRANSCRIPT_PROBLEMS
from adapters.readmodels import transcript_row, transcript_rows
from application.principal import Principal
from application.results import TranscriptStored
from domain.errors import InvalidValue, NotFound
from domain.transcript import RawEntry, parse_timestamp

CURSOR_KIND = "transcripts"
# Matches no stored session id (those are UUIDs).
NO_SESSION = "-"
TimeQuery = Annotated[
    str | None,
    Parameter(
        max_length=64, description="RFC 3339, with an offset", schema_extra={"format": "date-time"}
    ),
]


class EntryIn(msgspec.Struct, forbid_unknown_fields=True):
    role: str
    text: str
    timestamp: str
    interrupted: bool = False


class TranscriptIn(msgspec.Struct, forbid_unknown_fields=True):
    session_started_at: str
    session_ended_at: str
    transcripts: list[EntryIn]
    session_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None


class EntryView(msgspec.Struct):
    role: str
    text: str
    timestamp: datetime
    interrupted: bool


class TranscriptSummary(msgspec.Struct):
    transcript_id: str
    session_id: str | None
    session_started_at: datetime
    session_ended_at: datetime | None
    created_at: datetime
    status: Literal["recording", "complete"]
    end_reason: str | None
    entry_count: int


class TranscriptView(msgspec.Struct):
    """A summary with every entry (documents the answer, which is assembled from the
    stored JSON without decoding the entries)."""

    transcript_id: str
    session_id: str | None
    session_started_at: datetime
    session_ended_at: datetime | None
    created_at: datetime
    status: Literal["recording", "complete"]
    end_reason: str | None
    entry_count: int
    as_of: int
    transcripts: list[EntryView]


class TranscriptPage(msgspec.Struct):
    items: list[TranscriptSummary]
    next_cursor: str | None
    as_of: int


class Position(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    started_at: datetime
    created_at: datetime
    transcript_id: UUID


def _summary(row: dict[str, Any]) -> TranscriptSummary:
    return TranscriptSummary(
        transcript_id=str(row["transcript_id"]),
        session_id=row["session_id"],
        session_started_at=row["started_at"],
        session_ended_at=row["ended_at"],
        created_at=row["created_at"],
        status=row["status"],
        end_reason=row["end_reason"],
        entry_count=row["entry_count"],
    )


def _query_time(value: str | None, name: str) -> datetime | None:
    """An RFC 3339 filter time, parsed by the same rule as the body's times (no epoch
    numbers, no times without an offset)."""
    if value is None:
        return None
    try:
        return parse_timestamp(value, name)
    except InvalidValue as exc:
        raise BadRequest(f"{name} {exc.reason}") from None


def _session_filter(session_id: str | None) -> str | None:
    """A session id as the read model stores it; None if there is no filter. A value that
    is no session id at all matches nothing (and never reaches SQL as it came)."""
    if session_id is None:
        return None
    try:
        return str(UUID(session_id))
    except ValueError:
        return NO_SESSION


class TranscriptController(Controller):
    path = "/api/live/transcripts"
    tags = ["transcripts"]
    # A well-formed body of the wrong shape is 422 naming the field, e.g.
    # transcripts[3].text, as bad entries are (SPEC section 6).
    exception_handlers = {ValidationException: invalid_body}

    @post(
        "/",
        operation_id="storeTranscript",
        status_code=201,
        responses=TRANSCRIPT_PROBLEMS,
        summary="Store a conversation's transcript (bearer or service key)",
        **guarded(LIVE_WRITE, NOT_API_KEY),
    )
    async def store(
        self, request: Request[Any, Any, Any], data: TranscriptIn
    ) -> Response[TranscriptStored]:
        services = services_of(request)
        principal = principal_of(request)
        data = await strict(request, TranscriptIn)
        idem = await idempotency(request, principal)
        entries = [
            RawEntry(role=e.role, text=e.text, timestamp=e.timestamp, interrupted=e.interrupted)
            for e in data.transcripts
        ]
        answer = await in_command_thread(
            services,
            lambda: services.live.submit_transcript(
                principal,
                data.session_started_at,
                data.session_ended_at,
                entries,
                data.session_id,
                services.now,
                idem,
            )
        )
        return respond(answer)

    @get(
        "/",
        operation_id="listTranscripts",
        responses=READ_PROBLEMS,
        summary="The caller's transcripts, newest conversation first",
        **guarded(LIVE_READ),
    )
    async def list_transcripts(
        self,
        request: Request[Any, Any, Any],
        session_id: Annotated[str | None, Parameter(max_length=64)] = None,
        since: TimeQuery = None,
        until: TimeQuery = None,
        limit: Annotated[int, Parameter(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, Parameter(max_length=300)] = None,
    ) -> TranscriptPage:
        services = services_of(request)
        principal = principal_of(request)
        since_at = _query_time(since, "since")
        until_at = _query_time(until, "until")
        session_filter = _session_filter(session_id)
        key = cursors.cursor_key(services.pepper)
        before = _decode_position(key, principal, cursor) if cursor else None
        wanted = min_position(request)

        def read() -> TranscriptPage:
            mark = services.wait_for("transcripts", wanted)
            with services.read() as conn:
                rows = transcript_rows(
                    conn,
                    principal.tenant_id,
                    principal.user_id,
                    limit + 1,
                    session_id=session_filter,
                    since=since_at,
                    until=until_at,
                    before=before,
                )
            more = len(rows) > limit
            rows = rows[:limit]
            next_cursor = None
            if more:
                last = Position(
                    rows[-1]["started_at"], rows[-1]["created_at"], rows[-1]["transcript_id"]
                )
                next_cursor = cursors.sign(
                    key, principal, CURSOR_KIND, msgspec.json.encode(last)
                )
            return TranscriptPage(
                items=[_summary(r) for r in rows], next_cursor=next_cursor, as_of=mark
            )

        return await in_thread(read)

    @get(
        "/{transcript_id:str}",
        operation_id="getTranscript",
        responses={
            200: ResponseSpec(TranscriptView, description="The transcript with every entry"),
            **READ_PROBLEMS,
        },
        summary="One of the caller's transcripts, whole",
        **guarded(LIVE_READ),
    )
    async def get_transcript(
        self, request: Request[Any, Any, Any], transcript_id: str
    ) -> Response[Any]:
        services = services_of(request)
        principal = principal_of(request)
        wanted = min_position(request)

        def read() -> bytes:
            mark = services.wait_for("transcripts", wanted)
            with services.read() as conn:
                row = transcript_row(conn, principal.tenant_id, principal.user_id, transcript_id)
            if row is None:
                raise NotFound("transcript")
            head = msgspec.json.encode({**msgspec.to_builtins(_summary(row)), "as_of": mark})
            # The entries go out as PostgreSQL stored them: no decode and re-encode of up
            # to 5,000 entries per read.
            entries: str = row["entries"]
            return head[:-1] + b',"transcripts":' + entries.encode() + b"}"

        body = await in_thread(read)
        return Response(content=body, media_type="application/json")


def _decode_position(
    key: bytes, principal: Principal, text: str
) -> tuple[datetime, datetime, UUID]:
    payload = cursors.verify(key, principal, CURSOR_KIND, text)
    try:
        position = msgspec.json.decode(payload, type=Position)
    except msgspec.DecodeError:
        raise BadRequest("cursor is not one this API issued") from None
    return position.started_at, position.created_at, position.transcript_id
