"""The bridge: one live session per client socket, relayed to an upstream engine.

Metering runs on server time through the same application commands as the REST API:
`start_session` on `session.start`, `heartbeat` on the server's own timer (and on the
client's `session.heartbeat`), and the end — at `session_ends_at` (a heartbeat there bills
exactly to the limit and ends the session), on `session.end`, when the client drops
(billed to the drop), when the upstream is lost, or when the session is ended elsewhere
(a revoked token, the REST API): every `LiveSession.Ended` event reaches the bridge through
the application's notification log subscription (PostgreSQL LISTEN/NOTIFY).

Completed transcript lines are appended to the session's transcript as they complete, in
order, by a writer task per socket, and a line's `transcript.completed` goes out once it is
stored: whatever a client saw completed survives a crash of the bridge. At the end the
transcript is finalised, with a turn cut off by the end kept and marked `interrupted`.

Blocking application calls run in a thread pool; nothing here blocks the event loop. A
database blip does not end a session: heartbeats and line appends are tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import struct
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from application.live import LiveApplication
from application.principal import Principal
from application.results import HeartbeatAccepted, SessionEnded, SessionStarted
from application.settings import Settings
from domain.errors import (
    DomainError,
    InvalidValue,
    QuotaExceeded,
    SessionAlreadyActive,
    SessionNotActive,
)
from domain.session import LiveSession
from domain.transcript import MAX_TEXT, RawEntry, check_entry, format_timestamp
from realtime.deadline import next_step, seconds_left
from realtime.engine import (
    EngineAvatarState,
    EngineCompleted,
    EngineDelta,
    EngineInputText,
    engine_event_decoder,
)
from realtime.flood import TokenBucket
from realtime.protocol import (
    AudioHeader,
    AvatarState,
    ClientEvent,
    CloseCode,
    ErrorEvent,
    EventIds,
    InputAudioAppend,
    InputText,
    ProtocolError,
    QuotaExceededEvent,
    QuotaUpdated,
    QuotaWarning,
    ServerEvent,
    SessionEnd,
    SessionEndedEvent,
    SessionHeartbeat,
    SessionStart,
    SessionStartedEvent,
    TranscriptCompleted,
    TranscriptDelta,
    close_code_for,
    decode_audio,
    decode_client_event,
    encode,
    encode_audio,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
START_TIMEOUT_SECONDS = 30.0
# How long an upstream that stopped reading gets to take its close frame before it is cut.
UPSTREAM_CLOSE_SECONDS = 2.0
# How long a client that stopped reading gets to drain what was sent (and so learn the
# close code) before it is cut; memory stays bounded meanwhile: nothing more is queued.
SLOW_CONSUMER_GRACE_SECONDS = 20.0
# Waits between attempts to store a completed line while the database is unreachable.
LINE_RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
DEADLINE_RETRY_SECONDS = 0.5  # after a failed heartbeat at the deadline
_engine_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class BridgeDeps:
    """What the composition root hands the bridge (realtime imports no adapters)."""

    settings: Settings
    app: LiveApplication
    # A bearer or integration token → its principal, or None when it is not valid now.
    authenticate: Callable[[str], Principal | None]
    now: Callable[[], datetime]
    # Follows the ids of sessions whose end commits, until its stop event is set: calls the
    # first callable with each id, the second whenever it (re)starts listening.
    session_ends: Callable[
        [Callable[[UUID], None], Callable[[], None], threading.Event], None
    ]


class EndWatcher:
    """Hears of every session end as it commits (a PostgreSQL notification, no polling and
    no reading of the event log) and tells the connection holding that session, on its
    loop. Whatever ended while it was not listening it finds by looking at its sessions."""

    def __init__(self, deps: BridgeDeps, loop: asyncio.AbstractEventLoop) -> None:
        self._deps = deps
        self._loop = loop
        self._watchers: dict[UUID, Callable[[], None]] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="end-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def watch(self, session_id: UUID, callback: Callable[[], None]) -> None:
        self._watchers[session_id] = callback

    def unwatch(self, session_id: UUID) -> None:
        self._watchers.pop(session_id, None)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def _follow(self) -> None:
        self._deps.session_ends(self._heard, self._look_again, self._stopped)

    def _heard(self, session_id: UUID) -> None:
        if session_id in self._watchers:
            self._loop.call_soon_threadsafe(self._tell, session_id)

    def _look_again(self) -> None:
        for session_id in list(self._watchers):
            try:
                session = self._deps.app.load(LiveSession, session_id)
            except Exception:
                log.exception("looking at session %s failed", session_id)
                continue
            if session is not None and not session.is_active:
                self._heard(session_id)

    def _tell(self, session_id: UUID) -> None:
        callback = self._watchers.get(session_id)
        if callback is not None:
            callback()


def stored_lines(line: RawEntry) -> list[RawEntry]:
    """A completed line as transcript entries: itself, or, when an engine said more than one
    entry holds, consecutive pieces of it; nothing for a line of only whitespace."""
    pieces = (line.text[i : i + MAX_TEXT] for i in range(0, len(line.text), MAX_TEXT))
    return [msgspec.structs.replace(line, text=piece) for piece in pieces if piece.strip()]


class _Close:
    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class Bridge:
    """Process-wide state: dependencies, the thread pool and the end watcher."""

    def __init__(self, deps: BridgeDeps) -> None:
        self.deps = deps
        self.settings = deps.settings
        workers = max(4, self.settings.db_pool_size + self.settings.db_max_overflow)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bridge-app")
        self.watcher: EndWatcher | None = None
        self.connections: set[Connection] = set()

    def start(self) -> None:
        self.watcher = EndWatcher(self.deps, asyncio.get_running_loop())
        self.watcher.start()

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self.pool.shutdown(wait=True, cancel_futures=False)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(fn, *args))

    async def handle(self, ws: ServerConnection, principal: Principal, token: str) -> None:
        connection = Connection(self, ws, principal, token)
        self.connections.add(connection)
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)


class Connection:
    """One client socket, its session and its upstream."""

    def __init__(
        self, bridge: Bridge, ws: ServerConnection, principal: Principal, token: str
    ) -> None:
        settings = bridge.settings
        self.bridge = bridge
        self.deps = bridge.deps
        self.ws = ws
        self.principal = principal
        self.token = token
        self.ids = EventIds()
        self.out: asyncio.Queue[str | bytes | _Close] = asyncio.Queue(
            maxsize=settings.realtime_max_queued_events
        )
        rate = settings.realtime_max_messages_per_second
        self.bucket = TokenBucket(rate, 2 * rate)
        self.closing = False
        self.starting = False
        self.session: SessionStarted | None = None
        self.session_uuid: UUID | None = None
        self.ends_at: datetime | None = None
        self.deadline_moved = asyncio.Event()
        self.warned = False
        self.upstream: ClientConnection | None = None
        # Completed lines for the writer, each with the future it sets once it is stored.
        self.lines: asyncio.Queue[tuple[RawEntry, asyncio.Future[None]] | None] = (
            asyncio.Queue()
        )
        self.last_line_at: datetime | None = None
        self.partial: dict[str, tuple[str, str]] = {}  # item_id → (role, text so far)
        # The event_id of the first `input_audio.append` of the utterance being heard:
        # what the user line the engine makes of that audio answers.
        self.audio_event_id: str | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.writer: asyncio.Task[None] | None = None
        self.finishing: asyncio.Task[None] | None = None
        self.closer: asyncio.Task[None] | None = None
        self.beat: asyncio.Task[HeartbeatAccepted | None] | None = None

    # ---- the socket's life --------------------------------------------------------------

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        drop = asyncio.create_task(self._notice_drop())
        start_timer = asyncio.get_running_loop().call_later(
            START_TIMEOUT_SECONDS, self._start_timeout
        )
        try:
            await self._read_loop()
        finally:
            start_timer.cancel()
            self._finish("client_disconnected", at=self.deps.now())
            if self.finishing is not None:
                await asyncio.shield(self.finishing)
            for task in self.tasks:
                task.cancel()
            await self._close_upstream()
            for task in (sender, drop):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _notice_drop(self) -> None:
        """End the session when the connection is lost, at that moment, even while the
        read loop waits on the upstream's flow control: a client that is gone is not billed
        on until the upstream reads again."""
        await self.ws.wait_closed()
        self._finish("client_disconnected", at=self.deps.now())

    async def _read_loop(self) -> None:
        try:
            async for message in self.ws:
                if self.closing:
                    continue
                if not self.bucket.take():
                    self._error("rate_limited", "too many frames; closing")
                    self._close(CloseCode.RATE_LIMITED, "rate limited")
                    continue
                if isinstance(message, bytes):
                    await self._audio(message, None)
                    continue
                try:
                    event = decode_client_event(message)
                except ProtocolError as exc:
                    self._error(exc.code, exc.message, exc.reply_to)
                    continue
                await self._dispatch(event)
        except ConnectionClosed:
            pass

    def _start_timeout(self) -> None:
        if self.session is None and not self.starting and not self.closing:
            self._error("session_start_timeout", "no session.start in time")
            self._close(CloseCode.SESSION_IDLE, "no session started")

    async def _dispatch(self, event: ClientEvent) -> None:
        if isinstance(event, SessionStart):
            await self._start(event)
        elif self.session is None or self.finishing is not None:
            self._error("no_session", "send session.start first", event.event_id)
        elif isinstance(event, InputText):
            await self._text(event)
        elif isinstance(event, InputAudioAppend):
            try:
                pcm = event.pcm()
            except ValueError as exc:
                self._error("invalid_event", str(exc), event.event_id)
                return
            await self._audio(pcm, event.event_id)
        elif isinstance(event, SessionHeartbeat):
            self._client_heartbeat(event.event_id)
        elif isinstance(event, SessionEnd):
            self._finish("client", reply_to=event.event_id)

    # ---- start ----------------------------------------------------------------------------

    async def _start(self, event: SessionStart) -> None:
        if self.session is not None or self.starting:
            self._error("session_already_started", "one session per socket", event.event_id)
            return
        self.starting = True
        try:
            await self._start_session(event)
        except Exception:
            log.exception("session.start failed")
            self._error("internal_error", "the session could not be started", event.event_id)
            self._close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self.starting = False

    async def _start_session(self, event: SessionStart) -> None:
        bridge, app = self.bridge, self.deps.app
        # The token may have been revoked (or expired) since the handshake.
        principal = await bridge.call(self.deps.authenticate, self.token)
        if principal is None:
            self._error("unauthenticated", "the token is no longer valid", event.event_id)
            self._close(CloseCode.TOKEN_REVOKED, "token no longer valid")
            return
        try:
            upstream = await websockets.connect(
                bridge.settings.engine_url,
                open_timeout=5,
                max_size=4 * bridge.settings.realtime_max_frame_bytes,
                max_queue=16,
                close_timeout=UPSTREAM_CLOSE_SECONDS,
            )
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            log.warning("upstream %s unreachable: %s", bridge.settings.engine_url, exc)
            self._error("upstream_unavailable", "the engine is unavailable", event.event_id)
            self._close(CloseCode.UPSTREAM_UNAVAILABLE, "upstream unavailable")
            return
        try:
            answer = await bridge.call(
                app.start_session, principal, event.session_type, self.deps.now
            )
        except (QuotaExceeded, SessionAlreadyActive, InvalidValue) as exc:
            await _close_upstream_connection(upstream)
            self._start_refused(exc, event.event_id)
            return
        except BaseException:
            await _close_upstream_connection(upstream)
            raise
        started = msgspec.json.decode(answer.body, type=SessionStarted)
        self.upstream = upstream
        self.session, self.session_uuid = started, UUID(started.session_id)
        self.ends_at = started.session_ends_at
        assert bridge.watcher is not None
        bridge.watcher.watch(self.session_uuid, self._ended_elsewhere)
        self._send(
            SessionStartedEvent(
                event_id=self.ids(),
                reply_to=event.event_id,
                session_id=started.session_id,
                session_type=started.session_type,
                started_at=started.started_at,
                remaining_seconds=started.remaining_seconds,
                session_ends_at=started.session_ends_at,
                heartbeat_interval_seconds=started.heartbeat_interval_seconds,
                period_end=started.period_end,
            )
        )
        self.writer = asyncio.create_task(self._write_lines())
        self.tasks += [
            asyncio.create_task(self._upstream_loop()),
            asyncio.create_task(self._heartbeat_loop()),
            asyncio.create_task(self._deadline_loop()),
        ]
        # A revoke that scanned for this token's sessions just before this one was saved
        # has not ended it: look once more, now that it is saved.
        if principal.credential == "integration" and (
            await bridge.call(self.deps.authenticate, self.token)
        ) is None:
            await bridge.call(app.end_for, self.session_uuid, "token_revoked", self.deps.now)
            # Ended by this call or by the revoke itself, whose notice may have come before
            # this socket watched the session.
            self._ended_elsewhere()

    def _start_refused(self, exc: DomainError, reply_to: str | None) -> None:
        if isinstance(exc, QuotaExceeded):
            self._error(
                "live_quota_exceeded",
                f"the monthly live quota is used up until {exc.period_end}",
                reply_to,
            )
            self._close(CloseCode.QUOTA_EXCEEDED, "quota exceeded")
        elif isinstance(exc, SessionAlreadyActive):
            self._error(
                "session_already_active",
                f"session {exc.session_id} is already active for this user",
                reply_to,
            )
        else:
            self._error("invalid_event", str(exc), reply_to)

    # ---- client input ---------------------------------------------------------------------

    async def _text(self, event: InputText) -> None:
        try:
            stamp = format_timestamp(self.deps.now())
            check_entry(RawEntry(role="user", text=event.text, timestamp=stamp), "text", None)
        except InvalidValue as exc:
            self._error("invalid_event", f"{exc.field}: {exc.reason}", event.event_id)
            return
        said = EngineInputText(text=event.text, event_id=event.event_id)
        await self._to_upstream(_engine_encoder.encode(said).decode())

    async def _audio(self, pcm: bytes, reply_to: str | None) -> None:
        if self.session is None or self.finishing is not None:
            self._error("no_session", "send session.start first", reply_to)
            return
        if not pcm:
            # An empty frame would end an utterance of no audio: a turn nobody said.
            self._error("invalid_event", "audio is empty", reply_to)
            return
        if len(pcm) % 2:
            self._error("invalid_event", "PCM16 audio has an even number of bytes", reply_to)
            return
        if self.audio_event_id is None:
            self.audio_event_id = reply_to
        await self._to_upstream(pcm)

    async def _to_upstream(self, message: str | bytes) -> None:
        if self.upstream is None:
            return
        # Awaiting the upstream's flow control stops us reading the client: backpressure.
        with contextlib.suppress(ConnectionClosed):
            await self.upstream.send(message)

    # ---- upstream output -----------------------------------------------------------------

    async def _upstream_loop(self) -> None:
        assert self.upstream is not None
        try:
            async for message in self.upstream:
                if self.finishing is not None:
                    return
                if isinstance(message, bytes):
                    self._relay_audio(message)
                else:
                    await self._relay_event(message)
        except ConnectionClosed:
            pass
        if self.finishing is None:
            self._finish("upstream_lost")

    def _relay_audio(self, frame: bytes) -> None:
        try:
            header, pcm = decode_audio(frame)
        except (msgspec.DecodeError, struct.error, ValueError):
            log.warning("ignoring a malformed audio frame from upstream")
            return
        self._send_raw(encode_audio(AudioHeader(event_id=self.ids(), item_id=header.item_id), pcm))

    async def _relay_event(self, message: str) -> None:
        try:
            event = engine_event_decoder.decode(message)
        except msgspec.DecodeError:
            log.warning("ignoring a malformed event from upstream")
            return
        if isinstance(event, EngineAvatarState):
            self._send(AvatarState(event_id=self.ids(), state=event.state))
        elif isinstance(event, EngineDelta):
            role, text = self.partial.get(event.item_id, (event.role, ""))
            self.partial[event.item_id] = (role, text + event.delta)
            self._send(
                TranscriptDelta(
                    event_id=self.ids(), item_id=event.item_id, role=event.role,
                    delta=event.delta,
                )
            )
        elif isinstance(event, EngineCompleted):
            self.partial.pop(event.item_id, None)
            reply_to = event.reply_to
            if event.role == "user" and reply_to is None:
                # A line the engine heard in audio (an input_text names itself).
                reply_to, self.audio_event_id = self.audio_event_id, None
            at = self._line_time()
            stored = asyncio.get_running_loop().create_future()
            line = RawEntry(role=event.role, text=event.text, timestamp=format_timestamp(at))
            self.lines.put_nowait((line, stored))
            # The upstream waits meanwhile (a few ms), so events keep their order.
            await stored
            self._send(
                TranscriptCompleted(
                    event_id=self.ids(), reply_to=reply_to, item_id=event.item_id,
                    role=event.role, text=event.text, timestamp=at,
                )
            )

    def _line_time(self) -> datetime:
        """Server time of a completed line, never before the previous line's."""
        at = self.deps.now()
        if self.last_line_at is not None and at < self.last_line_at:
            at = self.last_line_at
        self.last_line_at = at
        return at

    async def _write_lines(self) -> None:
        """Appends each completed line, in order, as it completes."""
        while (item := await self.lines.get()) is not None:
            line, stored = item
            await self._append_line(line)
            if not stored.done():  # its waiter may be gone with the session's end
                stored.set_result(None)

    async def _append_line(self, line: RawEntry) -> None:
        assert self.session_uuid is not None
        entries = stored_lines(line)
        for wait in (*LINE_RETRY_SECONDS, None):
            if not entries:
                return
            try:
                await self.bridge.call(
                    self.deps.app.append_lines, self.session_uuid, entries, self.deps.now
                )
                return
            except DomainError as exc:
                log.warning("transcript line of %s refused: %s", self.session_uuid, exc)
                return
            except Exception:
                if wait is None:
                    log.exception("transcript line of %s lost", self.session_uuid)
                    return
                log.warning("storing a line of %s failed; retrying", self.session_uuid)
                await asyncio.sleep(wait)

    # ---- metering -------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        assert self.session is not None
        interval = self.session.heartbeat_interval_seconds
        while self.finishing is None:
            await asyncio.sleep(interval)
            try:
                beat = await self._heartbeat(None)
            except Exception:
                # The next beat bills this gap too (the idle timeout bounds how long).
                log.exception("heartbeat of %s failed", self.session.session_id)
                continue
            if beat is not None:
                self._send(self._quota_updated(beat, None))

    def _client_heartbeat(self, reply_to: str | None) -> None:
        """A client's heartbeat runs beside the read loop (which must keep reading to
        apply the flood limit); heartbeats arriving while one runs share its answer."""
        if self.beat is None or self.beat.done():
            self.beat = asyncio.create_task(self._heartbeat(reply_to))
        self.beat.add_done_callback(lambda beat: self._answer_beat(beat, reply_to))

    def _answer_beat(self, beat: asyncio.Task[HeartbeatAccepted | None], reply_to: str | None
                     ) -> None:
        if beat.cancelled():
            return
        if beat.exception() is not None:
            log.warning("a client heartbeat of %s failed: %s", self.session_uuid,
                        beat.exception())
            return
        answer = beat.result()
        if answer is not None:
            self._send(self._quota_updated(answer, reply_to))

    def _quota_updated(self, beat: HeartbeatAccepted, reply_to: str | None) -> QuotaUpdated:
        return QuotaUpdated(
            event_id=self.ids(),
            reply_to=reply_to,
            session_seconds=beat.session_seconds,
            remaining_seconds=beat.remaining_seconds,
            session_ends_at=beat.session_ends_at,
        )

    async def _heartbeat(self, reply_to: str | None) -> HeartbeatAccepted | None:
        """Bill now; the answer, or None once the session has ended (which it then
        finishes, naming `reply_to`). The callers send quota.updated."""
        if self.session is None or self.finishing is not None:
            return None
        try:
            answer = await self.bridge.call(
                self.deps.app.heartbeat, self.principal, self.session.session_id, self.deps.now
            )
        except (QuotaExceeded, SessionNotActive):
            self._finish("ended", reply_to=reply_to)
            return None
        beat = msgspec.json.decode(answer.body, type=HeartbeatAccepted)
        if beat.session_ends_at != self.ends_at:
            self.ends_at = beat.session_ends_at
            self.deadline_moved.set()
        return beat

    async def _deadline_loop(self) -> None:
        """Warn a minute before `session_ends_at`; end the session at it."""
        while self.finishing is None:
            assert self.ends_at is not None
            now = self.deps.now()
            action, delay = next_step(now, self.ends_at, self.warned)
            if action == "warn":
                self.warned = True
                self._send(
                    QuotaWarning(
                        event_id=self.ids(),
                        seconds_left=seconds_left(now, self.ends_at),
                        session_ends_at=self.ends_at,
                    )
                )
            elif action == "end":
                try:
                    await self._heartbeat(None)
                except Exception:
                    log.exception("heartbeat at the deadline of %s failed", self.session_uuid)
                    await asyncio.sleep(DEADLINE_RETRY_SECONDS)
                # Not ended (this clock ran a hair early): ask again shortly.
                await asyncio.sleep(0.05)
            else:
                self.deadline_moved.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.deadline_moved.wait(), delay)

    def _ended_elsewhere(self) -> None:
        if self.finishing is None:
            self._finish("ended")

    # ---- the end --------------------------------------------------------------------------

    def _finish(
        self, cause: str, reply_to: str | None = None, at: datetime | None = None
    ) -> None:
        """End the session once: `cause` is an end reason this socket decides (`client`,
        `client_disconnected`, `upstream_lost`) or `ended` when it has ended already."""
        if self.finishing is None and self.session is not None:
            self.finishing = asyncio.create_task(self._finish_session(cause, reply_to, at))

    async def _finish_session(
        self, cause: str, reply_to: str | None, at: datetime | None
    ) -> None:
        assert self.session is not None and self.session_uuid is not None
        app, sid = self.deps.app, self.session.session_id
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        try:
            if cause == "ended":
                view = await self.bridge.call(app.session_view, self.principal, sid)
                reason, seconds = str(view["end_reason"]), int(view["session_seconds"])
                ended_at: datetime = view["ended_at"]
            else:
                clock = self.deps.now if at is None else (lambda: at)
                answer = await self.bridge.call(app.end_session, self.principal, sid, cause, clock)
                ended = msgspec.json.decode(answer.body, type=SessionEnded)
                reason, seconds = ended.end_reason, ended.session_seconds
                ended_at = ended.ended_at
        except Exception:
            log.exception("ending session %s failed", sid)
            self._error("internal_error", "the session could not be ended cleanly")
            self._close(CloseCode.INTERNAL_ERROR, "internal error")
            return
        finally:
            assert self.bridge.watcher is not None
            self.bridge.watcher.unwatch(self.session_uuid)
        if reason == "quota_exceeded":
            self._send(
                QuotaExceededEvent(event_id=self.ids(), session_id=sid, remaining_seconds=0)
            )
        self._send(
            SessionEndedEvent(
                event_id=self.ids(), reply_to=reply_to, session_id=sid, reason=reason,
                session_seconds=seconds,
            )
        )
        ended_here = cause in ("client", "client_disconnected", "upstream_lost")
        self._close(close_code_for(reason, ended_here=ended_here), reason)
        await self._close_upstream()
        await self._finalise_transcript(reason, ended_at)

    async def _finalise_transcript(self, reason: str, ended_at: datetime) -> None:
        assert self.session_uuid is not None
        self.lines.put_nowait(None)
        if self.writer is not None:
            await self.writer
        cut_off: RawEntry | None = None
        for role, text in self.partial.values():
            if text.strip():
                # Cut off by the end: said by then, whenever this runs (and never before
                # the line that completed last).
                said = min(self.deps.now(), ended_at)
                if self.last_line_at is not None:
                    said = max(said, self.last_line_at)
                at = format_timestamp(said)
                cut_off = RawEntry(role=role, text=text, timestamp=at, interrupted=True)
        if cut_off is not None and len(cut_off.text) > MAX_TEXT:
            *head, cut_off = stored_lines(cut_off)
            for piece in head:
                await self._append_line(piece)
        try:
            await self.bridge.call(
                self.deps.app.finalise_transcript, self.session_uuid, reason, self.deps.now,
                cut_off,
            )
        except DomainError as exc:
            log.warning("transcript of %s not finalised: %s", self.session_uuid, exc)
        except Exception:
            log.exception("finalising the transcript of %s failed", self.session_uuid)

    async def _close_upstream(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            await _close_upstream_connection(upstream)

    # ---- sending ----------------------------------------------------------------------------

    def _send(self, event: ServerEvent) -> None:
        self._send_raw(encode(event).decode())

    def _error(self, code: str, message: str, reply_to: str | None = None) -> None:
        self._send(ErrorEvent(event_id=self.ids(), reply_to=reply_to, code=code, message=message))

    def _send_raw(self, frame: str | bytes) -> None:
        if self.closing:
            return
        try:
            self.out.put_nowait(frame)
        except asyncio.QueueFull:
            # The client does not read: close it rather than grow memory.
            self._abandon(CloseCode.SLOW_CONSUMER, "slow consumer")

    def _close(self, code: int, reason: str) -> None:
        """Close once every queued event is sent."""
        if self.closing:
            return
        try:
            self.out.put_nowait(_Close(code, reason))
        except asyncio.QueueFull:
            self._abandon(code, reason)
            return
        self.closing = True

    def _abandon(self, code: int, reason: str) -> None:
        log.warning("closing a client that does not read (%s): %s", code, reason)
        self.closing = True
        while not self.out.empty():  # never to be sent: let it go
            self.out.get_nowait()
        self.closer = asyncio.create_task(self._close_now(code, reason))
        self._finish("client_disconnected")

    async def _close_now(self, code: int, reason: str) -> None:
        """The close frame waits behind what the client has not read yet: it learns the
        code if it reads within the grace, and is cut off otherwise."""
        try:
            await asyncio.wait_for(self.ws.close(code, reason), SLOW_CONSUMER_GRACE_SECONDS)
        except TimeoutError:
            self.ws.transport.abort()

    async def _send_loop(self) -> None:
        try:
            while True:
                item = await self.out.get()
                if isinstance(item, _Close):
                    await self.ws.close(item.code, item.reason)
                    return
                await self.ws.send(item)
        except ConnectionClosed:
            pass


async def _close_upstream_connection(upstream: ClientConnection) -> None:
    """Close an upstream connection; one that stopped reading is cut off after a while."""
    try:
        await asyncio.wait_for(upstream.close(), UPSTREAM_CLOSE_SECONDS)
    except Exception:
        upstream.transport.abort()
