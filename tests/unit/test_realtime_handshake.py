"""The bridge's handshake (realtime.server), with stand-in token checks: which credential a
request carries, and what each refusal answers, before any socket opens."""

from __future__ import annotations

import asyncio
import gc
from datetime import UTC, datetime
from typing import Any, cast

from websockets.datastructures import Headers
from websockets.http11 import Request

from application.principal import Principal
from application.settings import Settings
from realtime.bridge import BridgeDeps
from realtime.server import RealtimeServer, credentials

WRITER = Principal(tenant_id="t", user_id="u", scopes=frozenset({"live:write"}),
                   credential="integration")
READER = Principal(tenant_id="t", user_id="u", scopes=frozenset({"live:read"}),
                   credential="integration")
USER = Principal(tenant_id="t", user_id="u", scopes=frozenset({"live:write"}),
                 credential="bearer")


def request(path: str = "/", **headers: str) -> Request:
    hdrs = Headers()
    for name, value in headers.items():
        hdrs[name] = value
    return Request(path, hdrs)


def server(tokens: dict[str, Principal]) -> RealtimeServer:
    def authenticate(token: str) -> Principal | None:
        if token == "boom":
            raise ConnectionError("the database is down")
        return tokens.get(token)

    # process_request never reaches the application.
    deps = BridgeDeps(settings=Settings(), app=cast(Any, None), authenticate=authenticate,
                      now=lambda: datetime.now(UTC), session_ends=lambda *_: None)
    return RealtimeServer(deps)


class Conn:
    """Stands in for a ServerConnection (the handshake only uses it as a key)."""


def status(srv: RealtimeServer, req: Request, conn: object | None = None) -> int | None:
    answer = asyncio.run(srv.process_request(cast(Any, conn or Conn()), req))
    return None if answer is None else answer.status_code


def test_credentials_come_from_the_header_or_the_query() -> None:
    assert credentials(request(Authorization="Bearer abc")) == ("abc", False)
    assert credentials(request(Authorization="bearer  abc ")) == ("abc", False)
    assert credentials(request(Authorization="Basic abc")) == (None, False)
    assert credentials(request("/?integration_token=xyz")) == ("xyz", True)
    assert credentials(request("/?integration_token=a&integration_token=b")) == (None, True)
    assert credentials(request("/")) == (None, True)


def test_refusals_are_http_answers() -> None:
    srv = server({"w": WRITER, "r": READER, "u": USER})
    assert status(srv, request()) == 401
    assert status(srv, request(Authorization="Bearer nope")) == 401
    assert status(srv, request("/?integration_token=" + "x" * 5000)) == 401
    assert status(srv, request("/?integration_token=u")) == 401  # user tokens: header only
    assert status(srv, request("/?integration_token=r")) == 403
    assert status(srv, request("/?integration_token=w")) is None
    assert status(srv, request(Authorization="Bearer u")) is None
    srv.bridge.pool.shutdown()


def test_a_token_that_cannot_be_checked_is_refused_with_503() -> None:
    srv = server({})
    answer = asyncio.run(srv.process_request(cast(Any, Conn()),
                                             request(Authorization="Bearer boom")))
    assert answer is not None and answer.status_code == 503
    assert answer.headers["Retry-After"] == "1"
    srv.bridge.pool.shutdown()


def test_an_admitted_handshake_that_never_opens_leaves_nothing_behind() -> None:
    # Admitted here, then refused by websockets (no upgrade, a foreign Origin): the
    # handler that takes the principal never runs.
    srv = server({"w": WRITER})
    conn = Conn()
    assert status(srv, request(Authorization="Bearer w"), conn) is None
    assert len(srv._accepted) == 1
    del conn
    gc.collect()
    assert len(srv._accepted) == 0
    srv.bridge.pool.shutdown()
