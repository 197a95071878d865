"""Helpers of the audit tests: the app role, the CLI as a subprocess, a scripted user."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec

from application.live import LiveApplication
from application.principal import Principal
from application.settings import with_role
from tests.support.clock import Clock

APP_ROLE = "xentree_app"
CLI = str(Path(sys.executable).parent / "xentree-live")


def as_app_role(url: str) -> str:
    return with_role(url, APP_ROLE)


def cli(
    url: str, state_dir: Path, *args: str, role: str = APP_ROLE
) -> subprocess.CompletedProcess[str]:
    """`xentree-live ARGS` against the database at `url`, connecting as `role`."""
    env = {
        **os.environ,
        "XENTREE_DATABASE_URL": url,
        "XENTREE_DATABASE_ROLE": role,
        "XENTREE_STATE_DIR": str(state_dir),
    }
    return subprocess.run(
        [CLI, *args], env=env, capture_output=True, text=True, timeout=120
    )


def last_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return msgspec.json.decode(done.stdout.strip().splitlines()[-1])


def principal() -> Principal:
    return Principal(
        tenant_id=f"t-{secrets.token_hex(4)}",
        user_id=f"u-{secrets.token_hex(4)}",
        scopes=frozenset({"live:read", "live:write"}),
        credential="bearer",
    )


def session_id(answer: Any) -> str:
    sid: str = msgspec.json.decode(answer.body)["session_id"]
    return sid


def one_session(app: LiveApplication, p: Principal, clock: Clock, seconds: float) -> str:
    """Start, bill once after `seconds`, end one second later."""
    sid = session_id(app.start_session(p, "voice", clock))
    clock.advance(seconds)
    app.heartbeat(p, sid, clock)
    clock.advance(1)
    app.end_session(p, sid, "client", clock)
    return sid
