"""The realtime bridge over real sockets: the stack's `xentree-live realtime` and
`xentree-live engine` processes, with the API, relay, projector and reaper behind them."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from ops.launcher import AppProcesses, Output
from ops.stack import free_port
from realtime.protocol import CloseCode, decode_audio
from tests.e2e.conftest import CLI, Stack, User
from tests.e2e.test_integration_http import ADMIN, grant
from tests.e2e.test_sessions_http import wait_until

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455's handshake constant


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
                headers: dict[str, str] | None = None, url: str | None = None,
                **options: Any) -> Iterator[Socket]:
    hdrs = dict(user.headers) if user is not None else {}
    hdrs.update(headers or {})
    with connect((url or realtime_url(stack)) + query, additional_headers=hdrs,
                 open_timeout=10, max_size=2**22, **options) as ws:
        yield Socket(ws)


def handshake_status(stack: Stack, query: str = "", headers: dict[str, str] | None = None,
                     **options: Any) -> int:
    with pytest.raises(InvalidStatus) as refused, open_socket(stack, query=query,
                                                              headers=headers, **options):
        pass
    return refused.value.response.status_code


@contextmanager
def own_bridge(stack: Stack, log: Path, *, word_seconds: float | None = None, **env: str
               ) -> Iterator[int]:
    """A second `xentree-live realtime` process on the stack, configured by `env`, with an
    engine of its own when `word_seconds` says how fast that one speaks; the bridge's port."""
    port = free_port()
    processes = [("bridge", ["realtime"])]
    if word_seconds is not None:
        engine_port = free_port()
        env = {**env, "XENTREE_ENGINE_URL": f"ws://127.0.0.1:{engine_port}"}
        processes.append(("engine", ["engine", "--word-seconds", str(word_seconds)]))
    bridge_env = {**stack.env, "XENTREE_REALTIME_PORT": str(port), "PYTHONUNBUFFERED": "1",
                  **env}
    with log.open("a", encoding="utf-8") as out, AppProcesses(
        bridge_env, processes, command=[CLI], output=Output(out), autorestart=False,
    ):
        wait_for_port(port)
        if word_seconds is not None:
            wait_for_port(engine_port)
        yield port


def session_when_ended(user: User, session_id: str, timeout: float = 10.0) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        view: dict[str, Any] = user.get(f"/api/live/sessions/{session_id}").json()
        return view if view.get("status") == "ended" else None

    return wait_until(ended, timeout=timeout, every=0.1)  # type: ignore[no-any-return]


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
        said = sock.send("input_text", text="hello there bridge")
        user_line = sock.wait_for("transcript.completed", role="user")
        assert user_line["text"] == "hello there bridge"
        assert user_line["reply_to"] == said, "the user line answers the input_text"
        ai_line = sock.wait_for("transcript.completed", role="ai")
        assert ai_line["text"] == "I heard 3 words: hello there bridge"
        sock.wait_for("avatar.state", state="idle")
        # One second of audio in 20 ms frames is one utterance, answered by length.
        for _ in range(50):
            sock.ws.send(b"\x01\x00" * 320)
        audio_line = sock.wait_for("transcript.completed", role="user")
        assert audio_line["text"] == "(audio, 1.00 seconds)"
        assert "reply_to" not in audio_line
        sock.wait_for("transcript.completed", role="ai")
        # The same half second as base64 in JSON.
        pcm = base64.b64encode(b"\x01\x00" * 8000).decode()
        appended = sock.send("input_audio.append", audio=pcm)
        heard = sock.wait_for("transcript.completed", role="user")
        assert heard["text"] == "(audio, 0.50 seconds)"
        assert heard["reply_to"] == appended, "the line answers the audio it was heard in"
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
        ("user", "(audio, 0.50 seconds)"),
        ("ai", "I heard 3 words: (audio, 0.50 seconds)"),
    ]


def test_quota_runs_out_mid_turn(stack: Stack) -> None:
    user = stack.user()
    # Four seconds of quota against an answer of 600 words (12 s of speech): the answer has
    # begun well before the limit even when storing the user's line is slow (the bridge
    # relays the answer only once that line is stored).
    user.assign("--plan", "custom", "--seconds", "4")
    with open_socket(stack, user) as sock:
        started = start(sock)
        assert started["remaining_seconds"] == 4
        ends_at = datetime.fromisoformat(started["session_ends_at"])
        warning = sock.wait_for("quota.warning")
        assert 0 < warning["seconds_left"] <= 4
        # A long answer: still being spoken when the quota runs out.
        sock.send("input_text", text=" ".join(["word"] * 600))
        exceeded = sock.wait_for("quota.exceeded", timeout=10)
        late = time.time() - ends_at.timestamp()
        assert exceeded["remaining_seconds"] == 0
        assert exceeded["session_id"] == started["session_id"]
        ended = sock.wait_for("session.ended")
        ai_said = [i for i, e in enumerate(sock.events)
                   if e["type"] == "transcript.delta" and e["role"] == "ai"]
        assert ai_said and ai_said[0] < sock.events.index(exceeded), (
            "the answer had not begun when the quota ran out")
        assert sock.events.index(exceeded) < sock.events.index(ended)
        assert ended["reason"] == "quota_exceeded"
        assert ended["session_seconds"] == 4
        assert sock.close_code() == CloseCode.QUOTA_EXCEEDED
    assert late < 1.0, f"quota.exceeded came {late:.2f} s after the limit"

    transcript = transcript_of(user, started["session_id"])
    assert transcript["end_reason"] == "quota_exceeded"
    last = transcript["transcripts"][-1]
    assert last["role"] == "ai" and last["interrupted"] is True
    assert last["text"].startswith("I heard 600 words:")
    # Cut off by the end, so said by the end (or with the line before it, when the end
    # reached the socket after that line: the bridge may notice the limit up to a second late).
    said, ended_at, before = (datetime.fromisoformat(t) for t in (
        last["timestamp"], transcript["session_ended_at"],
        transcript["transcripts"][-2]["timestamp"]))
    assert said <= max(ended_at, before)
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


FROZEN_CLIENT = """
import json, sys, time
from websockets.sync.client import connect
ws = connect(sys.argv[1], additional_headers={"Authorization": sys.argv[2]})
ws.send(json.dumps({"type": "session.start", "session_type": "voice"}))
while True:
    event = json.loads(ws.recv())
    if event["type"] == "session.started":
        print(event["session_id"], flush=True)
        break
time.sleep(600)
"""


def test_a_client_that_goes_silent_without_closing_is_dropped_within_seconds(
    stack: Stack
) -> None:
    """A frozen client (a tab the browser suspended, a laptop gone to sleep) keeps its TCP
    connection but answers no ping: the bridge drops it and ends the session within the
    keepalive's bound (5 s pings, 10 s to answer), not 40 s later."""
    user = stack.user()
    client = subprocess.Popen(
        [sys.executable, "-c", FROZEN_CLIENT, realtime_url(stack),
         user.headers["Authorization"]],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert client.stdout is not None
        sid = client.stdout.readline().strip()
        assert sid, "the client did not start a session"
        os.kill(client.pid, signal.SIGSTOP)
        frozen_at = time.time()
        view = session_when_ended(user, sid, timeout=30)
        assert view["end_reason"] == "client_disconnected"
        assert datetime.fromisoformat(view["ended_at"]).timestamp() - frozen_at < 17
    finally:
        client.kill()
        client.wait()


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
        # Empty audio is no utterance (the engine would answer a turn nobody said).
        empty = sock.send("input_audio.append", audio="")
        assert sock.wait_for("error", reply_to=empty)["code"] == "invalid_event"
        sock.ws.send(b"")
        assert sock.wait_for("error")["code"] == "invalid_event"
        sock.send("input_text", text="still here")
        sock.wait_for("transcript.completed", role="ai")
        user_lines = [e["text"] for e in sock.events
                      if e["type"] == "transcript.completed" and e["role"] == "user"]
        assert user_lines == ["still here"]
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
    user, bystander = stack.user(), stack.user()
    with open_socket(stack, bystander) as calm, open_socket(stack, user) as sock:
        start(calm)
        sid = start(sock)["session_id"]
        payload = json.dumps({"type": "session.heartbeat"})
        with contextlib.suppress(ConnectionClosed):
            for _ in range(2000):
                sock.ws.send(payload)
        assert sock.close_code() == CloseCode.RATE_LIMITED
        # The flooder's session ended with its socket; the other socket never noticed.
        assert session_when_ended(user, sid)["end_reason"] == "client_disconnected"
        calm.send("input_text", text="are you still there")
        assert calm.wait_for("transcript.completed", role="ai")["text"].endswith("there")
    assert "rate_limited" in [e.get("code") for e in sock.events]


def test_a_client_that_closes_without_ending_is_billed_to_the_close(stack: Stack) -> None:
    user = stack.user()
    with open_socket(stack, user) as sock:
        sid = start(sock)["session_id"]
        time.sleep(1.2)
        closed_at = time.time()
    view = session_when_ended(user, sid)
    assert view["end_reason"] == "client_disconnected"
    assert abs(datetime.fromisoformat(view["ended_at"]).timestamp() - closed_at) < 1.0
    assert view["session_seconds"] == 1


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


def test_revoking_every_token_of_the_tenant_ends_the_live_session(stack: Stack) -> None:
    admin = stack.user(ADMIN)
    issued = grant(admin, subject=f"embed-all-{time.monotonic_ns()}")
    with open_socket(stack, query=f"?integration_token={issued['token']}") as sock:
        start(sock)
        time.sleep(0.05)
        cutoff = datetime.now(UTC)
        r = admin.post("/api/integration/revoke-all", {"issued_before": cutoff.isoformat()})
        assert r.status_code == 200, r.text
        revoked_at = time.monotonic()
        ended = sock.wait_for("session.ended", timeout=5)
        assert time.monotonic() - revoked_at < 2.0
        assert ended["reason"] == "token_revoked"
        assert sock.close_code() == CloseCode.TOKEN_REVOKED


def test_handshake_refuses_expired_tokens_and_tokens_without_live_write(stack: Stack) -> None:
    expired = stack.issuer.mint("t-old", "u-old", "live:read live:write", 60,
                                now=time.time() - 3600)
    assert handshake_status(stack, headers={"Authorization": f"Bearer {expired}"}) == 401
    admin = stack.user(ADMIN)
    reader = grant(admin, subject=f"embed-ro-{time.monotonic_ns()}", scopes=["live:read"])
    assert handshake_status(stack, query=f"?integration_token={reader['token']}") == 403


def test_an_integration_token_in_the_authorization_header_runs_a_session(stack: Stack) -> None:
    admin = stack.user(ADMIN)
    issued = grant(admin, subject=f"embed-hdr-{time.monotonic_ns()}")
    with open_socket(stack, headers={"Authorization": f"Bearer {issued['token']}"}) as sock:
        start(sock)
        sock.send("input_text", text="from a server")
        assert sock.wait_for("transcript.completed", role="ai")["text"].endswith("from a server")
        end = sock.send("session.end")
        assert sock.wait_for("session.ended", reply_to=end)["reason"] == "client"
        assert sock.close_code() == CloseCode.NORMAL


def test_the_maximum_session_length_ends_the_session_on_time(stack: Stack) -> None:
    user = stack.user()
    user.assign("--plan", "custom", "--seconds", "600", "--max-session-seconds", "2")
    with open_socket(stack, user) as sock:
        started = start(sock)
        assert started["remaining_seconds"] == 600
        ends_at = datetime.fromisoformat(started["session_ends_at"])
        ended = sock.wait_for("session.ended")
        late = time.time() - ends_at.timestamp()
        assert ended["reason"] == "max_duration" and ended["session_seconds"] == 2
        assert "quota.exceeded" not in sock.types()
        assert sock.close_code() == CloseCode.MAX_DURATION
    assert late < 1.0, f"session.ended came {late:.2f} s after the limit"


def test_a_session_ended_through_the_rest_api_closes_its_socket(stack: Stack) -> None:
    user = stack.user()
    with open_socket(stack, user) as sock:
        sid = start(sock)["session_id"]
        r = user.post("/api/live/session/end", {"session_id": sid})
        assert r.status_code == 200, r.text
        ended = sock.wait_for("session.ended", timeout=5)
        assert ended["reason"] == "client" and "reply_to" not in ended
        assert sock.close_code() == CloseCode.ENDED_ELSEWHERE


def test_the_concurrent_session_limit_leaves_the_socket_open(stack: Stack) -> None:
    user = stack.user()
    other = user.start()  # through the REST API
    with open_socket(stack, user) as sock:
        refused = sock.send("session.start", session_type="voice")
        error = sock.wait_for("error", reply_to=refused)
        assert error["code"] == "session_already_active"
        assert other["session_id"] in error["message"]
        r = user.post("/api/live/session/end", {"session_id": other["session_id"]})
        assert r.status_code == 200, r.text
        start(sock)  # the same socket goes on


def test_an_unreachable_engine_refuses_the_start(stack: Stack) -> None:
    assert stack.apps is not None
    user = stack.user()
    stack.apps.kill("engine")
    try:
        with open_socket(stack, user) as sock:
            refused = sock.send("session.start", session_type="voice")
            assert sock.wait_for("error", reply_to=refused)["code"] == "upstream_unavailable"
            assert sock.close_code() == CloseCode.UPSTREAM_UNAVAILABLE
        assert user.get("/api/live/quota").json()["active_sessions"] == []
    finally:
        stack.apps.restart("engine")
        wait_for_port(int(stack.env["XENTREE_ENGINE_URL"].rpartition(":")[2]))


def test_a_crashed_bridge_loses_no_line_already_said(stack: Stack) -> None:
    assert stack.apps is not None
    user = stack.user()
    try:
        with open_socket(stack, user) as sock:
            sid = start(sock)["session_id"]
            sock.send("input_text", text="remember this")
            sock.wait_for("transcript.completed", role="ai")
            stack.apps.kill("realtime")  # SIGKILL: no end, no finalising

        def stored() -> dict[str, Any] | None:
            page = user.get("/api/live/transcripts", params={"session_id": sid}).json()
            items = [i for i in page["items"] if i["entry_count"] == 2]
            return items[0] if items else None

        summary = wait_until(stored, timeout=15)
        r = user.get(f"/api/live/transcripts/{summary['transcript_id']}")
        lines = [(e["role"], e["text"]) for e in r.json()["transcripts"]]
        assert lines == [("user", "remember this"), ("ai", "I heard 2 words: remember this")]
        # Nobody heartbeats any more: the reaper ends the session idle and, the bridge
        # being gone, finalises its transcript itself.
        final = wait_until(
            lambda: (s := stored()) is not None and s["status"] == "complete" and s, timeout=20
        )
        assert final["end_reason"] == "idle_timeout"
    finally:
        stack.apps.restart("realtime")
        wait_for_port(int(stack.env["XENTREE_REALTIME_PORT"]))


def test_a_client_that_does_not_read_is_closed_with_its_close_code(
    stack: Stack, tmp_path: Path
) -> None:
    user = stack.user()
    # An engine that speaks as fast as it can: the socket's buffers fill in moments.
    with own_bridge(stack, tmp_path / "bridge.log", word_seconds=0.0) as port:
        raw = socket.socket()
        # A receive buffer that fills soon, but not one so small that the kernel starts
        # probing a zero window: its probes back off to seconds apart, and draining what
        # was sent before the close would take longer than the bridge's grace.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        raw.connect(("127.0.0.1", port))
        # No keepalive pings of the client's own: not reading, it would miss the pongs and
        # give up on the connection itself.
        with open_socket(stack, user, url=f"ws://127.0.0.1:{port}", sock=raw,
                         max_queue=2, ping_interval=None) as sock:
            sid = start(sock)["session_id"]
            for _ in range(16):  # megabytes of streamed answer, none of it read
                sock.send("input_text", text=" ".join(["word"] * 2000))
            # Filling the buffers takes seconds, more on a loaded machine. The bridge
            # gives up on the client then, and gives it a grace to drain before cutting
            # it off: start reading as soon as it has given up, not when the read model
            # has caught up with the session's end.
            log = tmp_path / "bridge.log"
            wait_until(lambda: "closing a client that does not read" in log.read_text(),
                       timeout=90, every=0.05)
            # What was sent before the close still arrives, then the close code.
            assert sock.close_code(timeout=15) == CloseCode.SLOW_CONSUMER
        view = session_when_ended(user, sid, timeout=30)
        assert view["end_reason"] == "client_disconnected"


@contextmanager
def black_hole_engine() -> Iterator[str]:
    """An upstream that accepts the websocket handshake, then never reads a byte."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                key = re.search(rb"(?i)sec-websocket-key: *(\S+)", request)
                assert key is not None
                digest = hashlib.sha1(key.group(1) + WS_GUID, usedforsecurity=False).digest()
                conn.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                    + base64.b64encode(digest) + b"\r\n\r\n"
                )
                held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        for conn in held:
            conn.close()


def test_a_client_dropped_while_the_upstream_stalls_is_billed_to_the_drop(
    stack: Stack, tmp_path: Path
) -> None:
    user = stack.user()
    with black_hole_engine() as engine_url, own_bridge(
        stack, tmp_path / "bridge.log", XENTREE_ENGINE_URL=engine_url,
        XENTREE_REALTIME_MAX_MESSAGES_PER_SECOND="100000",
    ) as port:
        with open_socket(stack, user, url=f"ws://127.0.0.1:{port}") as sock:
            sid = start(sock)["session_id"]
            frame = b"\x01\x00" * 30_000

            def stream() -> None:  # more audio than the stalled upstream will ever take
                with contextlib.suppress(OSError, ConnectionClosed):
                    for _ in range(300):
                        sock.ws.send(frame)

            sender = threading.Thread(target=stream, daemon=True)
            sender.start()
            time.sleep(2.5)
            # Killed: a reset, no close frame.
            sock.ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                      struct.pack("ii", 1, 0))
            dropped_at = time.time()
            sock.ws.socket.close()
            sender.join(timeout=10)
        view = session_when_ended(user, sid, timeout=10)
        assert view["end_reason"] == "client_disconnected"
        # Seen at the latest by the next heartbeat's write (every second on this stack).
        assert datetime.fromisoformat(view["ended_at"]).timestamp() - dropped_at < 2.5
        assert view["session_seconds"] <= 5


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "bridge.crt", directory / "bridge.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_a_bridge_with_tls_and_an_origin_allowlist(stack: Stack, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    user = stack.user()
    with own_bridge(
        stack, tmp_path / "bridge.log",
        XENTREE_REALTIME_TLS_CERT=str(cert), XENTREE_REALTIME_TLS_KEY=str(key),
        XENTREE_REALTIME_ALLOWED_ORIGINS="https://app.example.com, https://other.example.com",
    ) as port:
        url = f"wss://127.0.0.1:{port}"
        trust = ssl.create_default_context(cafile=str(cert))
        foreign = {**user.headers, "Origin": "https://evil.example.com"}
        assert handshake_status(stack, headers=foreign, url=url, ssl=trust) == 403
        assert handshake_status(stack, url=url, ssl=trust) == 401
        allowed = {"Origin": "https://app.example.com"}
        with open_socket(stack, user, headers=allowed, url=url, ssl=trust) as sock:
            start(sock)
            sock.send("input_text", text="over tls")
            assert sock.wait_for("transcript.completed", role="ai")["text"].endswith("over tls")
        with open_socket(stack, user, url=url, ssl=trust) as sock:  # no Origin: not a browser
            sock.send("session.heartbeat")
            assert sock.wait_for("error")["code"] == "no_session"
        with pytest.raises((InvalidHandshake, OSError)), open_socket(  # TLS only
            stack, user, url=f"ws://127.0.0.1:{port}"
        ):
            pass
