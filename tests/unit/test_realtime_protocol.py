"""The realtime wire protocol and the bridge's pure rules: decoding, errors, close codes,
audio frames, the deadline steps and the flood limit."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.transcript import MAX_TEXT, RawEntry
from realtime.bridge import stored_lines
from realtime.deadline import END_MARGIN_SECONDS, WARNING_SECONDS, next_step, seconds_left
from realtime.engine import EngineCompleted, EngineInputText, answer_to, engine_event_decoder
from realtime.flood import TokenBucket
from realtime.protocol import (
    AudioHeader,
    CloseCode,
    ErrorEvent,
    EventIds,
    InputAudioAppend,
    InputText,
    ProtocolError,
    SessionEndedEvent,
    SessionStart,
    close_code_for,
    decode_audio,
    decode_client_event,
    encode,
    encode_audio,
    server_decoder,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_client_events_decode_by_type() -> None:
    start = decode_client_event('{"type":"session.start","event_id":"a","session_type":"voice"}')
    assert start == SessionStart(event_id="a", session_type="voice")
    text = decode_client_event('{"type":"input_text","text":"hi"}')
    assert isinstance(text, InputText) and text.event_id is None
    pcm = b"\x01\x00\x02\x00"
    audio = decode_client_event(
        json.dumps({"type": "input_audio.append", "audio": base64.b64encode(pcm).decode()})
    )
    assert isinstance(audio, InputAudioAppend) and audio.pcm() == pcm


@pytest.mark.parametrize(
    ("frame", "code", "reply_to"),
    [
        ("not json", "malformed", None),
        ("[1, 2]", "malformed", None),
        ('{"type": 5}', "malformed", None),
        ('{"type":"nope","event_id":"e1"}', "unknown_event", "e1"),
        ('{"event_id":"e2"}', "malformed", "e2"),  # no type at all
        ("{}", "malformed", None),
        ('{"type":"input_text","event_id":"e3"}', "invalid_event", "e3"),
        ('{"type":"input_text","text":""}', "invalid_event", None),
        ('{"type":"session.start","session_type":"video"}', "invalid_event", None),
        ('{"type":"session.end","extra":1}', "invalid_event", None),
        ('{"type":"session.end","event_id":""}', "invalid_event", None),
        ('{"type":"session.end","event_id":"' + "x" * 65 + '"}', "invalid_event", None),
    ],
)
def test_bad_frames_become_protocol_errors(frame: str, code: str, reply_to: str | None) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client_event(frame)
    assert caught.value.code == code
    assert caught.value.reply_to == reply_to


@given(st.binary(max_size=300) | st.text(max_size=300))
def test_no_frame_crashes_the_decoder(frame: bytes | str) -> None:
    try:
        decode_client_event(frame)
    except ProtocolError:
        pass


def test_bad_base64_audio_is_refused() -> None:
    with pytest.raises(ValueError):
        InputAudioAppend(audio="%%%").pcm()
    with pytest.raises(ValueError):
        InputAudioAppend(audio=base64.b64encode(b"abc").decode()).pcm()  # odd length


def test_server_events_carry_their_type_event_id_and_reply_to() -> None:
    ended = SessionEndedEvent(event_id="ev1", reply_to="c9", session_id="s", reason="client",
                              session_seconds=3)
    wire = json.loads(encode(ended))
    assert wire == {"type": "session.ended", "event_id": "ev1", "reply_to": "c9",
                    "session_id": "s", "reason": "client", "session_seconds": 3}
    error = json.loads(encode(ErrorEvent(event_id="ev2", code="malformed", message="m")))
    assert "reply_to" not in error  # omitted when the event answers nothing
    assert server_decoder.decode(encode(ended)) == ended


def test_event_ids_are_unique() -> None:
    a, b = EventIds(), EventIds()
    ids = [a() for _ in range(100)] + [b() for _ in range(100)]
    assert len(set(ids)) == 200


def test_audio_frames_round_trip() -> None:
    pcm = bytes(range(256)) * 5
    header, out = decode_audio(encode_audio(AudioHeader(event_id="e", item_id="i"), pcm))
    assert out == pcm
    assert header.type == "response.audio.delta" and header.sample_rate == 16_000
    with pytest.raises(msgspec.DecodeError):
        decode_audio(b"\x00\x00\x00\x02{x")


def test_close_codes_by_end_reason() -> None:
    assert close_code_for("quota_exceeded", ended_here=False) == CloseCode.QUOTA_EXCEEDED
    assert close_code_for("token_revoked", ended_here=False) == CloseCode.TOKEN_REVOKED
    assert close_code_for("upstream_lost", ended_here=True) == CloseCode.UPSTREAM_LOST
    assert close_code_for("client", ended_here=True) == CloseCode.NORMAL
    assert close_code_for("client", ended_here=False) == CloseCode.ENDED_ELSEWHERE
    codes = [v for k, v in vars(CloseCode).items() if k.isupper()]
    assert len(codes) == len(set(codes))
    assert all(c in (1000, 1009, 1011) or 4000 <= c <= 4999 for c in codes)


# ---- the deadline ---------------------------------------------------------------------


def test_far_deadline_waits_until_the_warning() -> None:
    step = next_step(T0, T0 + timedelta(seconds=600), warned=False)
    assert step == ("wait", 600 - WARNING_SECONDS)


def test_warning_comes_at_a_minute_left_or_at_once_when_less_is_left() -> None:
    assert next_step(T0, T0 + timedelta(seconds=60), warned=False).action == "warn"
    assert next_step(T0, T0 + timedelta(seconds=2), warned=False).action == "warn"
    assert seconds_left(T0, T0 + timedelta(seconds=1.2)) == 2


def test_after_the_warning_it_waits_just_past_the_deadline_then_ends() -> None:
    step = next_step(T0, T0 + timedelta(seconds=30), warned=True)
    assert step.action == "wait"
    assert step.delay == pytest.approx(30 + END_MARGIN_SECONDS)
    assert next_step(T0 + timedelta(seconds=30), T0 + timedelta(seconds=30), True).action == "end"
    assert next_step(T0 + timedelta(seconds=31), T0 + timedelta(seconds=30), True).action == "end"


@given(st.floats(min_value=-100, max_value=10_000), st.booleans())
def test_steps_never_wait_past_the_deadline_by_more_than_the_margin(left: float, warned: bool
                                                                    ) -> None:
    ends_at = T0 + timedelta(seconds=left)
    step = next_step(T0, ends_at, warned)
    assert step.delay >= 0
    assert step.delay <= max(0.0, left) + END_MARGIN_SECONDS + 1e-6
    if step.action == "end":
        assert ends_at <= T0


# ---- the flood limit ------------------------------------------------------------------


def test_token_bucket_allows_bursts_then_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=10, burst=20, clock=lambda: now[0])
    assert all(bucket.take() for _ in range(20))
    assert not bucket.take()
    now[0] += 0.5  # five tokens back
    assert sum(bucket.take() for _ in range(10)) == 5
    now[0] += 100  # never more than the burst
    assert sum(bucket.take() for _ in range(50)) == 20


# ---- lines and the engine ---------------------------------------------------------------


def test_a_line_longer_than_a_transcript_entry_is_stored_in_pieces() -> None:
    line = RawEntry(role="ai", text="x" * (2 * MAX_TEXT + 5), timestamp="2026-03-01T12:00:00Z")
    pieces = stored_lines(line)
    assert [len(p.text) for p in pieces] == [MAX_TEXT, MAX_TEXT, 5]
    assert "".join(p.text for p in pieces) == line.text
    assert all(p.role == "ai" and p.timestamp == line.timestamp for p in pieces)
    assert stored_lines(msgspec.structs.replace(line, text="short")) == [
        msgspec.structs.replace(line, text="short")
    ]
    assert stored_lines(msgspec.structs.replace(line, text="   ")) == []


def test_the_engine_answer_fits_one_transcript_entry() -> None:
    assert answer_to("hello there") == "I heard 2 words: hello there"
    longest = " ".join(["word"] * 2000)[:MAX_TEXT]
    assert len(answer_to(longest)) <= MAX_TEXT
    assert answer_to(longest) == answer_to(longest)  # deterministic


def test_the_engine_protocol_carries_the_client_event_it_answers() -> None:
    said = msgspec.json.decode(b'{"type":"input_text","text":"hi","event_id":"c7"}',
                               type=EngineInputText)
    assert said.event_id == "c7"
    old = msgspec.json.decode(b'{"type":"input_text","text":"hi"}', type=EngineInputText)
    assert old.event_id is None  # an engine or bridge that does not know the field
    line = engine_event_decoder.decode(
        b'{"type":"transcript.completed","item_id":"i","role":"user","text":"hi"}'
    )
    assert isinstance(line, EngineCompleted) and line.reply_to is None
    wire = json.loads(msgspec.json.encode(EngineCompleted(item_id="i", role="ai", text="t")))
    assert "reply_to" not in wire
