"""Transcript use cases: a whole transcript posted at once, and the append path the
realtime bridge follows line by line (keyed by session, finalised when the session ends)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from uuid import UUID, uuid4

import msgspec

from application.host import Host
from application.idempotency import IdempotencyRequest
from application.principal import Principal
from application.results import Answer, TranscriptStored
from domain.billing import END_REASONS
from domain.errors import InvalidValue, NotFound
from domain.session import LiveSession
from domain.transcript import RawEntry, Transcript, check_period, parse_timestamp


def _stored(transcript: Transcript) -> TranscriptStored:
    return TranscriptStored(
        transcript_id=str(transcript.id),
        session_id=transcript.session_id,
        entry_count=len(transcript.entries),
        created_at=transcript.created_at,
    )


class TranscriptUseCases:
    def submit_transcript(
        self: Host,
        principal: Principal,
        session_started_at: str,
        session_ended_at: str,
        entries: Sequence[RawEntry],
        session_id: str | None,
        now: Callable[[], datetime],
        idem: IdempotencyRequest | None = None,
    ) -> Answer:
        """Store a finished conversation's transcript. A `session_id` must name one of the
        caller's own sessions (anything else is not found, so existence does not leak)."""
        started_at = parse_timestamp(session_started_at, "session_started_at")
        ended_at = parse_timestamp(session_ended_at, "session_ended_at")
        check_period(started_at, ended_at)

        def decide() -> tuple[tuple[Transcript], int, TranscriptStored]:
            linked: str | None = None
            end_reason: str | None = None
            if session_id is not None:
                session = self._owned_session(principal, session_id)
                linked, end_reason = str(session.id), session.end_reason
            transcript = Transcript(
                id=uuid4(),
                tenant_id=principal.tenant_id,
                user_id=principal.user_id,
                session_id=linked,
                started_at=started_at,
                created_at=now(),
                live=False,
            )
            transcript.append(entries)
            transcript.finalise(ended_at, end_reason)
            return (transcript,), 201, _stored(transcript)

        return self.command(decide, idem)

    def append_lines(
        self: Host, session_id: UUID, lines: Sequence[RawEntry], now: Callable[[], datetime]
    ) -> Answer:
        """Persist completed lines of a live session as they happen (the bridge calls this
        per line), in the session's own transcript, created on its first line."""

        def decide() -> tuple[tuple[Transcript], int, TranscriptStored]:
            transcript = _live_transcript(self, session_id, now)
            transcript.append(lines)
            return (transcript,), 200, _stored(transcript)

        return self.command(decide, None)

    def finalise_transcript(
        self: Host,
        session_id: UUID,
        end_reason: str,
        now: Callable[[], datetime],
        cut_off: RawEntry | None = None,
    ) -> Answer:
        """Close the session's transcript with the session's end reason. A turn cut off by
        the end (`cut_off`) is kept, marked `interrupted`. Finalising twice changes nothing."""
        if end_reason not in END_REASONS:
            raise InvalidValue("end_reason", f"must be one of {', '.join(END_REASONS)}")

        def decide() -> tuple[tuple[Transcript], int, TranscriptStored]:
            transcript = _live_transcript(self, session_id, now)
            if not transcript.is_final:
                if cut_off is not None:
                    transcript.append([msgspec.structs.replace(cut_off, interrupted=True)])
                session = self.load(LiveSession, session_id)
                ended = session.ended_at if session is not None else None
                transcript.finalise(ended or now(), end_reason)
            return (transcript,), 200, _stored(transcript)

        return self.command(decide, None)

    def finalise_abandoned_transcript(
        self: Host, session_id: UUID, now: Callable[[], datetime]
    ) -> bool:
        """Finalise the live transcript of an ended session that nobody finalised (its
        realtime bridge went away with it), with the session's own end reason. False when
        there is nothing to do: no live transcript, one already final, or a session that
        has not ended."""
        transcript = self.load(Transcript, Transcript.live_id(session_id))
        session = self.load(LiveSession, session_id)
        if (transcript is None or transcript.is_final or session is None
                or session.end_reason is None):
            return False
        self.finalise_transcript(session_id, session.end_reason, now)
        return True


def _live_transcript(host: Host, session_id: UUID, now: Callable[[], datetime]) -> Transcript:
    transcript = host.load(Transcript, Transcript.live_id(session_id))
    if transcript is not None:
        return transcript
    session = host.load(LiveSession, session_id)
    if session is None:
        raise NotFound("session")
    return Transcript(
        id=Transcript.live_id(session_id),
        tenant_id=session.tenant_id,
        user_id=session.user_id,
        session_id=str(session_id),
        started_at=session.started_at,
        created_at=now(),
        live=True,
    )
