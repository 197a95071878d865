"""The realtime bridge over real sockets: the stack's `xentree-live realtime` and
`xentree-live engine` processes, with the API, relay, projector and reaper behind them."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from realtime.protocol import CloseCode, decode_audio
from tests.e2e.conftest import Stack, User
from tests.e2e.test_integration_http import ADMIN, grant
from tests.e2e.test_sessions_http import wait_until


def realtime_url(stack: Stack) -> str:
    return f"ws://127.0.0.1:{stack.env['XENTREE_REALTIME_PORT']}"


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    def listening() -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, timeout=timeout, every=0.1)


@pytest.fixture(scope="module", autouse=True)
def _bridge_ready(stack: Stack) -> None:
    wait_for_port(int(stack.env["XENTREE_REALTIME_PORT"]))
    wait_for_port(int(stack.env["XENTREE_ENGINE_URL"].rpartition(":")[2]))


class Socket:
    """A client socket that records what the server sent."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.audio: list[tuple[Any, bytes]] = []
        self._ids = 0

    def send(self, type_: str, **fields: Any) -> str:
        self._ids += 1
        event_id = f"c{self._ids}"
        self.ws.send(json.dumps({"type": type_, "event_id": event_id, **fields}))
        return event_id

    def wait_for(self, type_: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {type_} {match} in time; got {self.types()}")
            frame = self.ws.recv(timeout=left)
            if isinstance(frame, bytes):
                self.audio.append(decode_audio(frame))
                continue
            event = json.loads(frame)
            self.events.append(event)
            if event["type"] == type_ and all(event.get(k) == v for k, v in match.items()):
                return event

    def wait_for_any(self, timeout: float = 10.0) -> dict[str, Any]:
        while True:
            frame = self.ws.recv(timeout=timeout)
            if isinstance(frame, str):
                event: dict[str, Any] = json.loads(frame)
                self.events.append(event)
                return event

    def close_code(self, timeout: float = 10.0) -> int | None:
        """Read until the server closes; its close code."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                frame = self.ws.recv(timeout=deadline - time.monotonic())
                if isinstance(frame, str):
                    self.events.append(json.loads(frame))
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else None
        raise AssertionError("the server did not close the socket")

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


@contextmanager
def open_socket(stack: Stack, user: User | None = None, *, query: str = "",
                headers: dict[str, str] | None = None) -> Iterator[Socket]:
    hdrs = dict(user.headers) if user is not None else {}
    hdrs.update(headers or {})
    with connect(realtime_url(stack) + query, additional_headers=hdrs, open_timeout=10,
                 max_size=2**22) as ws:
        yield Socket(ws)


def handshake_status(stack: Stack, query: str = "", headers: dict[str, str] | None = None
                     ) -> int:
    with pytest.raises(InvalidStatus) as refused, open_socket(stack, query=query,
                                                              headers=headers):
        pass
    return refused.value.response.status_code


def start(sock: Socket, session_type: str = "voice") -> dict[str, Any]:
    event_id = sock.send("session.start", session_type=session_type)
    started = sock.wait_for("session.started")
    assert started["reply_to"] == event_id
    return started


def transcript_of(user: User, session_id: str) -> dict[str, Any]:
    def complete() -> dict[str, Any] | None:
        page = user.get("/api/live/transcripts", params={"session_id": session_id}).json()
        items = [i for i in page["items"] if i["status"] == "complete"]
        return items[0] if items else None

    summary = wait_until(complete, timeout=15)
    r = user.get(f"/api/live/transcripts/{summary['transcript_id']}")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_handshake_refuses_missing_forged_and_misplaced_tokens(stack: Stack) -> None:
    user = stack.user()
    token = user.headers["Authorization"].removeprefix("Bearer ")
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert handshake_status(stack) == 401
    assert handshake_status(stack, headers={"Authorization": f"Bearer {forged}"}) == 401
    assert handshake_status(stack, headers={"Authorization": "Basic abc"}) == 401
    assert handshake_status(stack, query="?integration_token=junk") == 401
    # A user access token is not accepted in the query string (it would end up in logs).
    assert handshake_status(stack, query=f"?integration_token={token}") == 401
    reader = stack.user("live:read")
    assert handshake_status(stack, headers=reader.headers) == 403
    with open_socket(stack, user) as sock:  # the same user's valid token opens
        sock.send("session.heartbeat")
        assert sock.wait_for("error")["code"] == "no_session"


def test_a_conversation_is_bridged_metered_and_its_transcript_stored(stack: Stack) -> None:
    user = stack.user()
    with open_socket(stack, user) as sock:
        started = start(sock, "avatar")
        assert started["remaining_seconds"] == 600
        sid = started["session_id"]
        sock.send("input_text", text="hello there bridge")
        user_line = sock.wait_for("transcript.completed", role="user")
        assert user_line["text"] == "hello there bridge"
        ai_line = sock.wait_for("transcript.completed", role="ai")
        assert ai_line["text"] == "I heard 3 words: hello there bridge"
        sock.wait_for("avatar.state", state="idle")
        # One second of audio in 20 ms frames is one utterance, answered by length.
        for _ in range(50):
            sock.ws.send(b"\x01\x00" * 320)
        audio_line = sock.wait_for("transcript.completed", role="user")
        assert audio_line["text"] == "(audio, 1.00 seconds)"
        sock.wait_for("transcript.completed", role="ai")
        beat = sock.send("session.heartbeat")
        updated = sock.wait_for("quota.updated", reply_to=beat)
        assert updated["remaining_seconds"] <= 600
        end = sock.send("session.end")
        ended = sock.wait_for("session.ended", reply_to=end)
        assert ended["reason"] == "client"
        assert sock.close_code() == CloseCode.NORMAL
    types = sock.types()
    assert types[0] == "session.started"
    assert {"transcript.delta", "avatar.state"} <= set(types)
    states = [e["state"] for e in sock.events if e["type"] == "avatar.state"]
    assert states[:3] == ["listening", "speaking", "idle"]
    deltas = "".join(e["delta"] for e in sock.events
                     if e["type"] == "transcript.delta" and e["item_id"] == ai_line["item_id"])
    assert deltas == ai_line["text"]
    ids = [e["event_id"] for e in sock.events] + [h.event_id for h, _ in sock.audio]
    assert len(ids) == len(set(ids)), "every server event has its own event_id"
    assert sock.audio and all(h.type == "response.audio.delta" for h, _ in sock.audio)
    assert all(len(pcm) == 640 for _, pcm in sock.audio)

    transcript = transcript_of(user, sid)
    assert transcript["end_reason"] == "client"
    lines = [(e["role"], e["text"]) for e in transcript["transcripts"]]
    assert lines == [
        ("user", "hello there bridge"),
        ("ai", "I heard 3 words: hello there bridge"),
        ("user", "(audio, 1.00 seconds)"),
        ("ai", "I heard 3 words: (audio, 1.00 seconds)"),
    ]


def test_quota_runs_out_mid_turn(stack: Stack) -> None:
    user = stack.user()
    user.assign("--plan", "custom", "--seconds", "2")
    with open_socket(stack, user) as sock:
        started = start(sock)
        assert started["remaining_seconds"] == 2
        ends_at = datetime.fromisoformat(started["session_ends_at"])
        warning = sock.wait_for("quota.warning")
        assert 0 < warning["seconds_left"] <= 2
        # A long answer: still being spoken when the quota runs out.
        sock.send("input_text", text=" ".join(["word"] * 400))
        exceeded = sock.wait_for("quota.exceeded", timeout=10)
        late = time.time() - ends_at.timestamp()
        ended = sock.wait_for("session.ended")
        assert sock.events.index(exceeded) < sock.events.index(ended)
        assert ended["reason"] == "quota_exceeded"
        assert ended["session_seconds"] == 2
        assert sock.close_code() == CloseCode.QUOTA_EXCEEDED
    assert late < 1.5, f"quota.exceeded came {late:.2f} s after the limit"

    transcript = transcript_of(user, started["session_id"])
    assert transcript["end_reason"] == "quota_exceeded"
    last = transcript["transcripts"][-1]
    assert last["role"] == "ai" and last["interrupted"] is True
    assert last["text"].startswith("I heard 400 words:")
    # The quota is gone: the next start is refused on the socket, with a close code.
    with open_socket(stack, user) as sock:
        sock.send("session.start", session_type="voice")
        assert sock.wait_for("error")["code"] == "live_quota_exceeded"
        assert sock.close_code() == CloseCode.QUOTA_EXCEEDED


def test_a_dropped_client_is_billed_to_the_drop(stack: Stack) -> None:
    user = stack.user()
    with open_socket(stack, user) as sock:
        sid = start(sock)["session_id"]
        time.sleep(2.3)
        # No close frame: the TCP connection just goes away, as when a browser is killed.
        sock.ws.socket.shutdown(socket.SHUT_RDWR)
        dropped_at = time.time()
        sock.ws.socket.close()

    def ended() -> dict[str, Any] | None:
        view = user.get(f"/api/live/sessions/{sid}").json()
        return view if view.get("status") == "ended" else None

    view = wait_until(ended, timeout=10)
    assert view["end_reason"] == "client_disconnected"
    assert abs(datetime.fromisoformat(view["ended_at"]).timestamp() - dropped_at) < 1.0
    assert view["session_seconds"] == 2


def test_malformed_unknown_and_oversized_frames(stack: Stack) -> None:
    user = stack.user()
    with open_socket(stack, user) as sock:
        sock.ws.send("this is not json")
        assert sock.wait_for("error")["code"] == "malformed"
        sock.ws.send(json.dumps({"type": "session.explode", "event_id": "x1"}))
        error = sock.wait_for("error", reply_to="x1")
        assert error["code"] == "unknown_event"
        sock.ws.send(json.dumps({"type": "input_text", "event_id": "x2"}))
        assert sock.wait_for("error", reply_to="x2")["code"] == "invalid_event"
        sock.ws.send(json.dumps([1, 2, 3]))
        assert sock.wait_for("error")["code"] == "malformed"
        sock.ws.send(b"\x00\x01" * 10)
        assert sock.wait_for("error")["code"] == "no_session"
        # The socket lives on: a session starts and runs.
        start(sock)
        sock.send("input_text", text="bad \x07 bell")
        assert sock.wait_for("error")["code"] == "invalid_event"
        sock.send("input_audio.append", audio="%%%not base64%%%")
        assert sock.wait_for("error")["code"] == "invalid_event"
        sock.send("input_text", text="still here")
        sock.wait_for("transcript.completed", role="ai")
        # Oversized: the frame limit closes the socket with 1009, the session ends.
        sock.ws.send(b"\x00" * (65 * 1024))
        assert sock.close_code() == CloseCode.MESSAGE_TOO_BIG
    with open_socket(stack, user) as sock:  # the process survived; the user can go again
        wait_until(lambda: _starts(sock), timeout=10, every=0.2)


def _starts(sock: Socket) -> bool:
    sock.send("session.start", session_type="voice")
    while True:
        event = sock.wait_for_any()
        if event["type"] == "session.started":
            return True
        if event["type"] == "error":
            return False


def test_a_flood_is_closed_with_its_close_code(stack: Stack) -> None:
    user = stack.user()
    with open_socket(stack, user) as sock:
        start(sock)
        payload = json.dumps({"type": "session.heartbeat"})
        with contextlib.suppress(ConnectionClosed):
            for _ in range(2000):
                sock.ws.send(payload)
        assert sock.close_code() == CloseCode.RATE_LIMITED
    assert "rate_limited" in [e.get("code") for e in sock.events]


def test_a_lost_engine_ends_the_session_upstream_lost(stack: Stack) -> None:
    assert stack.apps is not None
    user = stack.user()
    try:
        with open_socket(stack, user) as sock:
            start(sock)
            stack.apps.kill("engine")
            ended = sock.wait_for("session.ended")
            assert ended["reason"] == "upstream_lost"
            assert sock.close_code() == CloseCode.UPSTREAM_LOST
    finally:
        stack.apps.restart("engine")
        wait_for_port(int(stack.env["XENTREE_ENGINE_URL"].rpartition(":")[2]))


def test_a_revoked_integration_token_ends_the_live_session(stack: Stack) -> None:
    admin = stack.user(ADMIN)
    issued = grant(admin, subject=f"embed-rt-{time.monotonic_ns()}")
    query = f"?integration_token={issued['token']}"
    with open_socket(stack, query=query) as sock:
        start(sock)
        r = admin.post("/api/integration/revoke", {"jti": issued["jti"]})
        assert r.status_code == 200, r.text
        revoked_at = time.monotonic()
        ended = sock.wait_for("session.ended", timeout=5)
        assert time.monotonic() - revoked_at < 2.0
        assert ended["reason"] == "token_revoked"
        assert sock.close_code() == CloseCode.TOKEN_REVOKED
    assert handshake_status(stack, query=query) == 401
