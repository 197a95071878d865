"""A running stack (API, relay, projector, reaper as real processes) for HTTP tests."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from adapters.auth.dev_issuer import DevIssuer
from application.settings import load_settings
from ops.launcher import AppProcesses
from ops.stack import free_port, wait_for_http
from tests.support.services import scratch_database, start_app_processes, unique_topic_name

CLI = str(Path(sys.executable).parent / "xentree-live")


@dataclass
class Stack:
    url: str
    env: dict[str, str]
    issuer: DevIssuer
    client: httpx.Client = field(repr=False)
    # The app processes, for fault tests (kill, restart).
    apps: AppProcesses | None = field(default=None, repr=False)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [CLI, *args], env=self.env, capture_output=True, text=True, timeout=60
        )
        if check and done.returncode != 0:
            raise AssertionError(f"xentree-live {args} failed: {done.stderr}")
        return done

    def user(self, scope: str = "live:read live:write") -> User:
        tenant, user_id = f"t-{secrets.token_hex(4)}", f"u-{secrets.token_hex(4)}"
        token = self.issuer.mint(tenant, user_id, scope, 3600)
        return User(self, tenant, user_id, {"Authorization": f"Bearer {token}"})


@dataclass
class User:
    stack: Stack
    tenant: str
    user_id: str
    headers: dict[str, str]

    def post(self, path: str, json: object = None, **headers: str) -> httpx.Response:
        return self.stack.client.post(path, json=json, headers={**self.headers, **headers})

    def put(self, path: str, json: object = None, **headers: str) -> httpx.Response:
        return self.stack.client.put(path, json=json, headers={**self.headers, **headers})

    def get(self, path: str, **kw: object) -> httpx.Response:
        headers = {**self.headers, **kw.pop("headers", {})}  # type: ignore[dict-item]
        return self.stack.client.get(path, headers=headers, **kw)  # type: ignore[arg-type]

    def start(self, session_type: str = "voice") -> dict:  # type: ignore[type-arg]
        r = self.post("/api/live/session/start", {"session_type": session_type})
        assert r.status_code == 201, r.text
        return r.json()

    def assign(self, *args: str) -> None:
        self.stack.cli(
            "plan", "assign", "--tenant", self.tenant, "--user", self.user_id, *args
        )


@pytest.fixture(scope="session")
def stack(
    database_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    # A database of its own: the stack's reaper must not end other tests' sessions.
    with scratch_database(database_url) as own_database:
        yield from _run_stack(own_database, kafka_bootstrap, tmp_path_factory)


def _run_stack(
    database_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("state")
    port = free_port()
    env = {
        **os.environ,
        "XENTREE_DATABASE_URL": database_url,
        "XENTREE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "XENTREE_KAFKA_TOPIC": unique_topic_name("e2e"),
        "XENTREE_STATE_DIR": str(state),
        "XENTREE_API_PORT": str(port),
        "XENTREE_API_WORKERS": "2",
        "XENTREE_IDLE_TIMEOUT_SECONDS": "3",
        "XENTREE_HEARTBEAT_INTERVAL_SECONDS": "1",
        "XENTREE_REAPER_INTERVAL_SECONDS": "0.2",
        "XENTREE_PLAN_FREE_SECONDS": "600",
        "XENTREE_DATABASE_ROLE": "xentree_app",  # the apps may append history, never change it
        "XENTREE_AUDIT_PLATFORM_TENANT": "platform-audit",
        "XENTREE_REALTIME_PORT": str(free_port()),
        "XENTREE_ENGINE_URL": f"ws://127.0.0.1:{free_port()}",
    }
    subprocess.run([CLI, "migrate"], env=env, check=True, timeout=120, capture_output=True)
    apps = start_app_processes(
        database_url, kafka_bootstrap, env=env, log_path=state / "apps.log"
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/healthz", timeout=60)
        settings = load_settings(env)
        with httpx.Client(base_url=url, timeout=30) as client:
            yield Stack(url, env, DevIssuer.load_or_create(settings), client, apps)
    finally:
        apps.stop()
        print((state / "apps.log").read_text()[-20000:])
