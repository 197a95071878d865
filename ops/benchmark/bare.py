"""The bare anchors: a Litestar app with one JSON endpoint and one endpoint that does only
the Ed25519 signature check of a compact JWS. Served by `uvicorn ops.benchmark.bare:app
--factory` under the API's own server settings (workers, uvloop, httptools, no access log).

With `BENCH_SAVE_DB` (a database's parameters as JSON) it also has `POST /save`: the
create-and-save anchor's step (a trivial aggregate, the library's own recorder) behind
HTTP, run the way the API runs a command (its command threads, its pool sizes), and
nothing else: no credential, no domain, no pipeline. Two of them are what a start + end
pair would cost if each command cost no more than the library's trivial save.
"""

from __future__ import annotations

import asyncio
import base64
import os
from concurrent.futures import ThreadPoolExecutor
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

    routes: list[Any] = [json_endpoint, verify]
    on_shutdown: list[Any] = []
    if os.environ.get("BENCH_SAVE_DB"):
        save, close = _save_endpoint(os.environ["BENCH_SAVE_DB"])
        routes.append(save)
        on_shutdown.append(close)
    return Litestar(routes, on_shutdown=on_shutdown, debug=False)


def _save_endpoint(database: str) -> tuple[Any, Any]:
    import msgspec
    from litestar import post

    from application.settings import DatabaseParams, load_settings
    from ops.benchmark.anchors import Counter, es_app

    settings = load_settings()
    store = es_app(msgspec.json.decode(database, type=DatabaseParams),
                   pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow)
    threads = ThreadPoolExecutor(max_workers=settings.command_threads)

    def create_and_save() -> str:
        counter = Counter()
        store.save(counter)
        return str(counter.id)

    @post("/save", status_code=201)
    async def save() -> dict[str, str]:
        return {"id": await asyncio.get_running_loop().run_in_executor(threads,
                                                                       create_and_save)}

    def close() -> None:
        threads.shutdown()
        store.close()

    return save, close
