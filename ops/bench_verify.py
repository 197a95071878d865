"""Benchmark: integration-token verify through the HTTP API, side by side with a bare
Litestar endpoint that does only the Ed25519 signature check, in the same run.

    .venv/bin/python ops/bench_verify.py                    # own embedded PostgreSQL
    .venv/bin/python ops/bench_verify.py --seconds 10 --connections 32

Both servers run under the same settings (uvicorn, uvloop, httptools, one worker, no access
log). The real verify does everything a production verify does: bearer authentication of
the caller, the rate-limit upsert in PostgreSQL, strict token parsing, the signature, the
claims, and the revocation read in PostgreSQL. The rate limit is set high so that it is
counted but never refuses. The load generator is one asyncio process with keep-alive
connections; on a small machine it shares the CPUs with the server, so the numbers are
best read side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.auth.dev_issuer import DevIssuer
from application.settings import load_settings
from ops.launcher import AppProcesses, Output, cli_path
from ops.stack import EmbeddedPostgres, free_port, wait_for_http

ADMIN_SCOPE = "integration:manage integration:verify live:read"


# ---- the bare endpoint (run as `uvicorn ops.bench_verify:bare_app --factory`) ---------


def bare_app() -> Any:
    """A Litestar app whose one endpoint checks an Ed25519 JWS signature and nothing else."""
    import base64

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from litestar import Litestar, post

    def unb64(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    key = Ed25519PublicKey.from_public_bytes(unb64(os.environ["BENCH_PUBLIC_X"]))

    @post("/verify", status_code=200)
    async def verify(data: dict[str, str]) -> dict[str, bool]:
        header, payload, signature = data["token"].split(".")
        try:
            key.verify(unb64(signature), f"{header}.{payload}".encode())
        except InvalidSignature:
            return {"active": False}
        return {"active": True}

    return Litestar([verify], debug=False)


def uvicorn_command(target: str, port: int) -> list[str]:
    """The uvicorn invocation shared by both servers (the API's own settings)."""
    return [
        sys.executable, "-m", "uvicorn", target, "--factory", "--host", "127.0.0.1",
        "--port", str(port), "--workers", "1", "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning",
    ]


# ---- load generation ------------------------------------------------------------------


async def _connection(port: int, request: bytes, deadline: float,
                      latencies: list[float], statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            status = int(status_line.split()[1])
            statuses[status] = statuses.get(status, 0) + 1
            if status != 200 or b'"active":true' not in body:
                raise RuntimeError(f"unexpected answer {status}: {body[:200]!r}")
    finally:
        writer.close()


def run_load(port: int, path: str, body: dict[str, str], headers: dict[str, str],
             seconds: float, connections: int) -> dict[str, float]:
    payload = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n{head}\r\n"
    ).encode() + payload
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def main() -> None:
        deadline = time.perf_counter() + seconds
        await asyncio.gather(*(
            _connection(port, request, deadline, latencies, statuses)
            for _ in range(connections)
        ))

    started = time.perf_counter()
    asyncio.run(main())
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
    }


# ---- the run ----------------------------------------------------------------------------


@contextmanager
def api_on_embedded_postgres() -> Iterator[tuple[str, dict[str, str], Path]]:
    work = Path(tempfile.mkdtemp(prefix="xentree-bench-verify-"))
    pg = EmbeddedPostgres(work / "pg", free_port(), log_path=work / "postgres.log")
    port = free_port()
    env = {
        **os.environ,
        "XENTREE_DATABASE_URL": pg.start(),
        "XENTREE_STATE_DIR": str(work / "state"),
        "XENTREE_API_PORT": str(port),
        "XENTREE_API_WORKERS": "1",
        "XENTREE_RATE_LIMIT_VERIFY": "1000000000",
        "PYTHONUNBUFFERED": "1",
    }
    log = (work / "apps.log").open("a", encoding="utf-8")
    apps: AppProcesses | None = None
    try:
        subprocess.run([cli_path(), "migrate"], env=env, check=True, capture_output=True)
        apps = AppProcesses(env, [("api", ["api"])], output=Output(log)).start()
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/healthz", timeout=60)
        yield url, env, work
    finally:
        if apps is not None:
            apps.stop()
        log.close()
        pg.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()

    with api_on_embedded_postgres() as (url, env, work):
        issuer = DevIssuer.load_or_create(load_settings(env))
        admin = {"Authorization": "Bearer " + issuer.mint("bench", "admin", ADMIN_SCOPE, 3600)}
        with httpx.Client(base_url=url, timeout=30) as client:
            r = client.post("/api/integration/grant", headers=admin,
                            json={"subject": "embed", "scopes": ["live:read"],
                                  "ttl_seconds": 600})
            r.raise_for_status()
            token = r.json()["token"]
            jwk = client.get("/api/integration/jwks?tenantId=bench").json()["keys"][0]

        bare_port = free_port()
        bare = subprocess.Popen(
            uvicorn_command("ops.bench_verify:bare_app", bare_port),
            env={**env, "BENCH_PUBLIC_X": jwk["x"],
                 "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
            stdout=(work / "bare.log").open("w"), stderr=subprocess.STDOUT,
        )
        try:
            wait_for_http(f"http://127.0.0.1:{bare_port}/schema/openapi.json", timeout=30)
            api_port = int(url.rpartition(":")[2])
            results = {}
            for name, port, path, headers in (
                ("bare Litestar + Ed25519 check", bare_port, "/verify", {}),
                ("POST /api/integration/verify", api_port, "/api/integration/verify", admin),
            ):
                run_load(port, path, {"token": token}, headers, 1.0, args.connections)  # warm
                results[name] = run_load(port, path, {"token": token}, headers,
                                         args.seconds, args.connections)
        finally:
            bare.terminate()
            bare.wait(10)

    print(f"{os.cpu_count()} CPUs, {args.connections} keep-alive connections, "
          f"{args.seconds:.0f} s each, one uvicorn worker per server")
    print(f"{'endpoint':<32} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, r in results.items():
        print(f"{name:<32} {r['requests']:>9.0f} {r['rps']:>8.0f} {r['p50_ms']:>8.2f} "
              f"{r['p99_ms']:>8.2f}")


if __name__ == "__main__":
    main()
