"""The reference upstream engine: a websocket server that answers each user utterance with
a deterministic AI turn, so the whole realtime path runs with no outside service.

Its protocol (what the bridge speaks to any upstream):

- bridge → engine: `{"type": "input_text", "text", "event_id"?}` text frames, and binary
  frames of PCM16 mono 16 kHz audio. Audio is one utterance once no frame came for
  UTTERANCE_GAP seconds; it is "transcribed" by its length.
- engine → bridge: `avatar.state {state}`, `transcript.delta {item_id, role, delta}`,
  `transcript.completed {item_id, role, text, reply_to?}` text frames (the user line of an
  `input_text` names its `event_id` in `reply_to`), and binary audio frames in the client
  protocol's layout (realtime.protocol.encode_audio).

A turn: `listening`, the user's line completed, `speaking`, the reply streamed one word at
a time (a text delta and a 20 ms audio frame per word), the reply completed, `idle`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import struct
from urllib.parse import urlsplit

import msgspec
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from realtime.protocol import (
    MAX_TEXT,
    SAMPLE_RATE,
    AudioHeader,
    AvatarStateName,
    Role,
    encode_audio,
)

log = logging.getLogger(__name__)

UTTERANCE_GAP = 0.3
WORD_SECONDS = 0.02
FRAME_SAMPLES = SAMPLE_RATE // 50  # 20 ms
MAX_FRAME_BYTES = 1024 * 1024


# ---- the engine protocol ---------------------------------------------------------------


class _UpstreamEvent(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    pass


class EngineInputText(_UpstreamEvent, tag="input_text"):
    text: str
    event_id: str | None = None  # the client event, named again by the user line


class EngineAvatarState(_UpstreamEvent, tag="avatar.state"):
    state: AvatarStateName


class EngineDelta(_UpstreamEvent, tag="transcript.delta"):
    item_id: str
    role: Role
    delta: str


class EngineCompleted(_UpstreamEvent, tag="transcript.completed"):
    item_id: str
    role: Role
    text: str
    reply_to: str | None = None


EngineEvent = EngineAvatarState | EngineDelta | EngineCompleted
engine_event_decoder = msgspec.json.Decoder(EngineEvent)
_input_decoder = msgspec.json.Decoder(EngineInputText)
_encoder = msgspec.json.Encoder()


# ---- deterministic answers -------------------------------------------------------------


def answer_to(utterance: str) -> str:
    """The AI's answer to a user line: the same line always gets the same answer, and it
    fits in one line of a transcript (at most MAX_TEXT characters, as the user's line)."""
    words = utterance.split()
    return f"I heard {len(words)} words: {utterance}"[:MAX_TEXT].rstrip()


def audio_utterance(n_bytes: int) -> str:
    return f"(audio, {n_bytes / (2 * SAMPLE_RATE):.2f} seconds)"


def tone_frame(index: int) -> bytes:
    """20 ms of a 440 Hz tone, PCM16 little-endian; `index` keeps the phase running."""
    start = index * FRAME_SAMPLES
    samples = (
        int(8000 * math.sin(2 * math.pi * 440 * (start + n) / SAMPLE_RATE))
        for n in range(FRAME_SAMPLES)
    )
    return struct.pack(f"<{FRAME_SAMPLES}h", *samples)


# ---- one upstream connection -----------------------------------------------------------


class EngineConnection:
    def __init__(self, ws: ServerConnection, word_seconds: float) -> None:
        self.ws = ws
        self.word_seconds = word_seconds
        # Utterances waiting for their turn, with the input_text event they came from.
        self.turns: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue(maxsize=16)
        self.items = itertools.count(1)
        self.frames = itertools.count()
        self.audio_bytes = 0
        self.audio_timer: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        speaker = asyncio.create_task(self._speak())
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    self._hear_audio(len(message))
                    continue
                try:
                    said = _input_decoder.decode(message)
                except msgspec.DecodeError:
                    log.warning("engine: ignoring a malformed frame")
                    continue
                await self.turns.put((said.text, said.event_id))
        except ConnectionClosed:
            pass
        finally:
            if self.audio_timer is not None:
                self.audio_timer.cancel()
            speaker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await speaker

    def _hear_audio(self, n_bytes: int) -> None:
        self.audio_bytes += n_bytes
        if self.audio_timer is not None:
            self.audio_timer.cancel()
        self.audio_timer = asyncio.get_running_loop().call_later(
            UTTERANCE_GAP, self._audio_utterance_ended
        )

    def _audio_utterance_ended(self) -> None:
        n_bytes, self.audio_bytes, self.audio_timer = self.audio_bytes, 0, None
        with contextlib.suppress(asyncio.QueueFull):
            self.turns.put_nowait((audio_utterance(n_bytes), None))

    async def _speak(self) -> None:
        while True:
            utterance, event_id = await self.turns.get()
            await self._turn(utterance, event_id)

    async def _send(self, event: EngineEvent) -> None:
        await self.ws.send(_encoder.encode(event).decode())

    async def _turn(self, utterance: str, event_id: str | None) -> None:
        n = next(self.items)
        user_item, ai_item = f"item_u{n}", f"item_a{n}"
        await self._send(EngineAvatarState(state="listening"))
        await self._send(
            EngineCompleted(item_id=user_item, role="user", text=utterance, reply_to=event_id)
        )
        await self._send(EngineAvatarState(state="speaking"))
        answer = answer_to(utterance)
        for i, word in enumerate(answer.split(" ")):
            await self._send(
                EngineDelta(item_id=ai_item, role="ai", delta=word if i == 0 else f" {word}")
            )
            frame = encode_audio(
                AudioHeader(event_id=f"engine_{n}_{i}", item_id=ai_item),
                tone_frame(next(self.frames)),
            )
            await self.ws.send(frame)
            await asyncio.sleep(self.word_seconds)
        await self._send(EngineCompleted(item_id=ai_item, role="ai", text=answer))
        await self._send(EngineAvatarState(state="idle"))


async def serve_engine(
    url: str, stop: asyncio.Event, word_seconds: float = WORD_SECONDS
) -> None:
    """Serve the engine at the host and port of `url` until `stop` is set."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 8766

    async def handler(ws: ServerConnection) -> None:
        await EngineConnection(ws, word_seconds).run()

    async with serve(handler, host, port, max_size=MAX_FRAME_BYTES, max_queue=64):
        log.info("engine listening on ws://%s:%s", host, port)
        await stop.wait()
