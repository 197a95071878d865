"""The bridge's websocket server: authentication at the handshake, then one Connection
per socket.

A client authenticates before the upgrade, with `Authorization: Bearer <token>` (a user
access token or an integration token) or, for browsers, which cannot send headers,
`?integration_token=<token>` (integration tokens only). A missing, forged, expired or
revoked token is refused with HTTP 401, a token without `live:write` with 403, a foreign
Origin (when an allowlist is configured) with 403: never a socket that opens and fails.
When the token cannot be checked (the database is down) the answer is 503: fail closed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
import weakref
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import uvloop
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Origin

from application.principal import Principal
from realtime.bridge import Bridge, BridgeDeps

log = logging.getLogger(__name__)

REQUIRED_SCOPE = "live:write"
MAX_TOKEN_LENGTH = 4096
# The kernel grows a socket's send buffer to megabytes on its own (autotuning): a client
# that stopped reading would hold that much and be noticed only once it is full. A fixed
# buffer bounds both; 64 KiB is two seconds of PCM16 audio at 16 kHz.
SEND_BUFFER_BYTES = 64 * 1024
PING_INTERVAL_SECONDS = 5
PING_TIMEOUT_SECONDS = 10


def _refusal(status: int, reason: str, message: str) -> Response:
    headers = Headers()
    headers["Content-Type"] = "text/plain; charset=utf-8"
    headers["Cache-Control"] = "no-store"
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="xentree-live"'
    if status == 503:
        headers["Retry-After"] = "1"
    return Response(status, reason, headers, f"{message}\n".encode())


def credentials(request: Request) -> tuple[str | None, bool]:
    """The token a handshake carries, and whether it came in the query string."""
    authorization = request.headers.get("Authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, False
        return token.strip(), False
    query = parse_qs(urlsplit(request.path).query)
    tokens = query.get("integration_token", [])
    if len(tokens) == 1 and tokens[0]:
        return tokens[0], True
    return None, True


class RealtimeServer:
    def __init__(self, deps: BridgeDeps) -> None:
        self.deps = deps
        self.bridge = Bridge(deps)
        # Weak: a handshake admitted here can still fail (no upgrade, a foreign Origin)
        # and never reach the handler, which is what pops the entry.
        self._accepted: weakref.WeakKeyDictionary[ServerConnection, tuple[Principal, str]] = (
            weakref.WeakKeyDictionary()
        )

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        token, from_query = credentials(request)
        if token is None or len(token) > MAX_TOKEN_LENGTH:
            return _refusal(401, "Unauthorized", "credentials are required")
        try:
            principal = await self.bridge.call(self.deps.authenticate, token)
        except Exception:
            log.exception("could not check a token at the handshake")
            return _refusal(503, "Service Unavailable", "try again shortly")
        if principal is None:
            return _refusal(401, "Unauthorized", "invalid token")
        if from_query and principal.credential != "integration":
            # Query strings end up in logs and histories: only short-lived embed tokens there.
            return _refusal(401, "Unauthorized", "the query parameter takes integration tokens")
        if not principal.has_scope(REQUIRED_SCOPE):
            return _refusal(403, "Forbidden", f"the token lacks the {REQUIRED_SCOPE} scope")
        self._accepted[connection] = (principal, token)
        return None

    async def handler(self, connection: ServerConnection) -> None:
        accepted = self._accepted.pop(connection, None)
        if accepted is None:  # cannot happen: process_request admitted it
            await connection.close(1011, "unauthenticated")
            return
        principal, token = accepted
        bound_send_buffer(connection)
        await self.bridge.handle(connection, principal, token)

    async def serve(self, stop: asyncio.Event) -> None:
        settings = self.deps.settings
        origins: list[Origin | None] | None = None
        if settings.realtime_allowed_origins:
            # Non-browser clients send no Origin; they still need a valid token.
            origins = [Origin(o) for o in settings.realtime_allowed_origins] + [None]
        self.bridge.start()
        try:
            async with serve(
                self.handler,
                settings.realtime_host,
                settings.realtime_port,
                process_request=self.process_request,
                origins=origins,
                ssl=tls_context(settings.realtime_tls_cert, settings.realtime_tls_key),
                max_size=settings.realtime_max_frame_bytes,
                max_queue=16,
                write_limit=64 * 1024,
                # A client that stops answering pings without closing (a frozen tab, a
                # machine gone to sleep) is dropped within 15 s, not billed on for 40.
                ping_interval=PING_INTERVAL_SECONDS,
                ping_timeout=PING_TIMEOUT_SECONDS,
                close_timeout=2,
                server_header=None,
            ):
                scheme = "wss" if settings.realtime_tls_cert else "ws"
                log.info(
                    "realtime bridge on %s://%s:%s, upstream %s", scheme,
                    settings.realtime_host, settings.realtime_port, settings.engine_url,
                )
                await stop.wait()
                # Leaving the block closes every socket (1001); each session then ends as
                # client_disconnected, billed to this moment.
        finally:
            self.bridge.stop()


def bound_send_buffer(connection: ServerConnection) -> None:
    sock = connection.transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)


def tls_context(cert: str, key: str) -> ssl.SSLContext | None:
    if not cert and not key:
        return None
    if not (cert and key):
        raise ValueError("XENTREE_REALTIME_TLS_CERT and XENTREE_REALTIME_TLS_KEY go together")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def run(deps: BridgeDeps) -> None:
    """Serve the bridge until SIGTERM or SIGINT."""
    run_until_signalled(RealtimeServer(deps).serve)


def run_until_signalled(serve_fn: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve_fn(stop)

    # uvloop: the bridge spends its time in socket I/O.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
