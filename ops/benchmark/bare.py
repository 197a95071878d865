"""The bare anchors: a Litestar app with one JSON endpoint and one endpoint that does only
the Ed25519 signature check of a compact JWS. Served by `uvicorn ops.benchmark.bare:app
--factory` under the API's own server settings (workers, uvloop, httptools, no access log).
"""

from __future__ import annotations

import base64
import os
from typing import Any


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def app() -> Any:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from litestar import Litestar, get, post

    key = Ed25519PublicKey.from_public_bytes(_unb64(os.environ["BENCH_PUBLIC_X"]))

    @get("/json")
    async def json_endpoint() -> dict[str, Any]:
        # About the size and shape of a quota answer.
        return {
            "plan": "free",
            "period_start": "2026-01-01T00:00:00Z",
            "period_end": "2026-02-01T00:00:00Z",
            "limit_seconds": 600,
            "used_seconds": 0,
            "remaining_seconds": 600,
            "max_session_seconds": 3600,
            "active_sessions": [],
            "as_of": 0,
        }

    @post("/verify", status_code=200)
    async def verify(data: dict[str, str]) -> dict[str, bool]:
        header, payload, signature = data["token"].split(".")
        try:
            key.verify(_unb64(signature), f"{header}.{payload}".encode())
        except InvalidSignature:
            return {"active": False}
        return {"active": True}

    return Litestar([json_endpoint, verify], debug=False)
