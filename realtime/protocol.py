"""The realtime socket's wire protocol (docs/realtime-protocol.md), as msgspec Structs.

Client events are JSON text frames tagged by `type`; audio may also come as binary frames
of PCM16 mono 16 kHz. Server events are JSON text frames, each with a fresh `event_id`;
a reply names the client event it answers in `reply_to`. Server audio goes out as binary
`response.audio.delta` frames: a 4-byte big-endian header length, a JSON header (the
event's type, event_id and item_id), then the PCM16 little-endian samples.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import secrets
import struct
from datetime import datetime
from typing import Annotated, Final, Literal

import msgspec

SAMPLE_RATE = 16_000
MAX_TEXT = 10_000
EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
AvatarStateName = Literal["idle", "listening", "speaking"]
Role = Literal["user", "ai"]


# ---- close codes --------------------------------------------------------------------


class CloseCode:
    """Application close codes (4000-4999), one per way a socket can be closed by us."""

    NORMAL: Final = 1000  # the client ended the session
    MESSAGE_TOO_BIG: Final = 1009  # a frame over the size limit (closed by websockets)
    INTERNAL_ERROR: Final = 1011
    SESSION_IDLE: Final = 4408  # ended by the idle timeout (or no session.start in time)
    QUOTA_EXCEEDED: Final = 4402
    TOKEN_REVOKED: Final = 4403
    MAX_DURATION: Final = 4409
    ENDED_ELSEWHERE: Final = 4410  # ended through the REST API by another client
    RATE_LIMITED: Final = 4429  # the client sent frames faster than the flood limit
    SLOW_CONSUMER: Final = 4430  # the client did not read its events
    UPSTREAM_LOST: Final = 4502
    UPSTREAM_UNAVAILABLE: Final = 4503  # the engine could not be reached to start
    START_REFUSED: Final = 4400  # session.start refused for good (quota used up)


CLOSE_FOR_REASON: dict[str, int] = {
    "client": CloseCode.NORMAL,
    "quota_exceeded": CloseCode.QUOTA_EXCEEDED,
    "max_duration": CloseCode.MAX_DURATION,
    "token_revoked": CloseCode.TOKEN_REVOKED,
    "idle_timeout": CloseCode.SESSION_IDLE,
    "upstream_lost": CloseCode.UPSTREAM_LOST,
    "client_disconnected": CloseCode.NORMAL,
}


def close_code_for(reason: str, *, ended_here: bool) -> int:
    """The close code after a session ended for `reason`; a client end made through the
    REST API rather than this socket closes it with ENDED_ELSEWHERE."""
    if reason == "client" and not ended_here:
        return CloseCode.ENDED_ELSEWHERE
    return CLOSE_FOR_REASON.get(reason, CloseCode.NORMAL)


# ---- client → server ----------------------------------------------------------------


class _ClientEvent(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True):
    event_id: EventId | None = None


class SessionStart(_ClientEvent, tag="session.start"):
    session_type: Literal["voice", "avatar"]


class InputAudioAppend(_ClientEvent, tag="input_audio.append"):
    audio: str  # base64 PCM16 mono 16 kHz

    def pcm(self) -> bytes:
        """The decoded samples, or ValueError."""
        try:
            data = base64.b64decode(self.audio, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("audio must be base64") from None
        if len(data) % 2:
            raise ValueError("PCM16 audio has an even number of bytes")
        return data


class InputText(_ClientEvent, tag="input_text"):
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)]


class SessionHeartbeat(_ClientEvent, tag="session.heartbeat"):
    pass


class SessionEnd(_ClientEvent, tag="session.end"):
    pass


ClientEvent = SessionStart | InputAudioAppend | InputText | SessionHeartbeat | SessionEnd
CLIENT_EVENT_TYPES: frozenset[str] = frozenset(
    {"session.start", "input_audio.append", "input_text", "session.heartbeat", "session.end"}
)


class _Head(msgspec.Struct):
    """Just enough of a frame to name it in an error answer."""

    type: str | None = None
    event_id: str | None = None


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, reply_to: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reply_to = reply_to


_client_decoder = msgspec.json.Decoder(ClientEvent)
_head_decoder = msgspec.json.Decoder(_Head)


def decode_client_event(frame: str | bytes) -> ClientEvent:
    """A client JSON frame as its event, or ProtocolError (`malformed`, `unknown_event`,
    `invalid_event`) naming the event when it could be read."""
    try:
        event: ClientEvent = _client_decoder.decode(frame)
        return event
    except msgspec.DecodeError as exc:
        detail = str(exc)
    try:
        head = _head_decoder.decode(frame)
    except msgspec.DecodeError:
        raise ProtocolError("malformed", "frames must be JSON objects with a string type") from None
    reply_to = head.event_id if isinstance(head.event_id, str) else None
    if reply_to is not None and not 1 <= len(reply_to) <= 64:
        reply_to = None
    if head.type is None:
        raise ProtocolError("malformed", "frames must be JSON objects with a string type",
                            reply_to)
    if head.type not in CLIENT_EVENT_TYPES:
        raise ProtocolError("unknown_event", f"unknown event type {head.type!r}", reply_to)
    raise ProtocolError("invalid_event", detail, reply_to)


# ---- server → client ----------------------------------------------------------------


class _ServerEvent(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    event_id: str
    reply_to: str | None = None


class SessionStartedEvent(_ServerEvent, tag="session.started"):
    session_id: str
    session_type: str
    started_at: datetime
    remaining_seconds: int
    session_ends_at: datetime
    heartbeat_interval_seconds: int
    period_end: datetime


class TranscriptDelta(_ServerEvent, tag="transcript.delta"):
    item_id: str
    role: Role
    delta: str


class TranscriptCompleted(_ServerEvent, tag="transcript.completed"):
    item_id: str
    role: Role
    text: str
    timestamp: datetime


class AvatarState(_ServerEvent, tag="avatar.state"):
    state: AvatarStateName


class QuotaUpdated(_ServerEvent, tag="quota.updated"):
    session_seconds: int
    remaining_seconds: int
    session_ends_at: datetime


class QuotaWarning(_ServerEvent, tag="quota.warning"):
    seconds_left: int
    session_ends_at: datetime


class QuotaExceededEvent(_ServerEvent, tag="quota.exceeded"):
    session_id: str
    remaining_seconds: int  # always 0: said, not left out as a default


class SessionEndedEvent(_ServerEvent, tag="session.ended"):
    session_id: str
    reason: str
    session_seconds: int


class ErrorEvent(_ServerEvent, tag="error"):
    code: str
    message: str


ServerEvent = (
    SessionStartedEvent
    | TranscriptDelta
    | TranscriptCompleted
    | AvatarState
    | QuotaUpdated
    | QuotaWarning
    | QuotaExceededEvent
    | SessionEndedEvent
    | ErrorEvent
)

_encoder = msgspec.json.Encoder()
server_decoder = msgspec.json.Decoder(ServerEvent)


def encode(event: ServerEvent) -> bytes:
    return _encoder.encode(event)


class EventIds:
    """Server event ids: a per-socket random prefix and a counter (cheap, unique, ordered)."""

    def __init__(self) -> None:
        self._prefix = f"ev_{secrets.token_hex(6)}_"
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter)}"


# ---- binary audio frames --------------------------------------------------------------


class AudioHeader(msgspec.Struct, kw_only=True):
    event_id: str
    item_id: str
    type: str = "response.audio.delta"
    sample_rate: int = SAMPLE_RATE


_HEADER_LENGTH = struct.Struct(">I")
_audio_header_decoder = msgspec.json.Decoder(AudioHeader)


def encode_audio(header: AudioHeader, pcm: bytes) -> bytes:
    head = _encoder.encode(header)
    return _HEADER_LENGTH.pack(len(head)) + head + pcm


def decode_audio(frame: bytes) -> tuple[AudioHeader, bytes]:
    (length,) = _HEADER_LENGTH.unpack_from(frame)
    start = _HEADER_LENGTH.size
    return _audio_header_decoder.decode(frame[start : start + length]), frame[start + length :]
