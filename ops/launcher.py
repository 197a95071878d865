"""The dev stack supervisor: `python ops/launcher.py` (or `./ops/run`).

Starts embedded PostgreSQL and Tansu (unless XENTREE_DATABASE_URL / XENTREE_KAFKA_BOOTSTRAP
point elsewhere), migrates, then runs and supervises the app processes, restarting any that
exit unexpectedly. SIGINT or SIGTERM stops everything in reverse order and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO
from urllib.parse import quote, urlsplit, urlunsplit

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from application.settings import EMBEDDED_PG_PORT, load_settings
from ops.stack import (
    EmbeddedKafka,
    EmbeddedPostgres,
    die_with_parent,
    wait_for_http,
)

# (name shown in the output, arguments after `xentree-live`)
PROCESSES: list[tuple[str, list[str]]] = [
    ("api", ["api"]),
    ("relay", ["relay"]),
    ("projector", ["project"]),
    ("reaper", ["reaper"]),
    ("engine", ["engine"]),
    ("realtime", ["realtime"]),
]
STOP_GRACE_SECONDS = 10.0
APP_ROLE = "xentree_app"  # the dev stack's application role (adapters/eventstore/history.py)
BACKOFF_START_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
HEALTHY_AFTER_SECONDS = 30.0  # a child up this long gets its backoff reset


def cli_path() -> str:
    """`xentree-live` from the same environment as this interpreter."""
    return str(Path(sys.executable).parent / "xentree-live")


class Output:
    """Line-prefixed, thread-safe writer shared by every child's output pump."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def line(self, name: str, text: str) -> None:
        stream = self._stream or sys.stdout
        with self._lock:
            stream.write(f"{name:<10}| {text.rstrip()}\n")
            stream.flush()

    def raw(self, text: str) -> None:
        stream = self._stream or sys.stdout
        with self._lock:
            stream.write(text + "\n")
            stream.flush()

    def pump(self, name: str, pipe: IO[bytes]) -> None:
        with pipe:
            for raw in iter(pipe.readline, b""):
                self.line(name, raw.decode(errors="replace"))


def spawn(argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Start a child in its own process group that dies with us even if we are SIGKILLed."""
    return subprocess.Popen(
        list(argv),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        process_group=0,
        preexec_fn=die_with_parent(signal.SIGTERM),
    )


def terminate(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM the child's process group, SIGKILL it after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
    # Reap anything left in the group (workers) once the leader is gone.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    wanted: bool = True  # False after stop()/kill(): do not restart it
    restarts: int = 0
    started_at: float = 0.0
    pump: threading.Thread | None = field(default=None, repr=False)


class AppProcesses:
    """Runs `xentree-live <args>` children, prefixes their output, restarts crashed ones.

    `kill(name)` stops a child for good (until `restart(name)`); `crash(name)` SIGKILLs it
    and lets the supervisor bring it back with backoff, as in production.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        processes: Sequence[tuple[str, Sequence[str]]] = PROCESSES,
        *,
        command: Sequence[str] | None = None,
        output: Output | None = None,
        autorestart: bool = True,
    ) -> None:
        base = list(command) if command else [cli_path()]
        self.env = dict(env)
        self.output = output or Output()
        self.autorestart = autorestart
        self.children = {name: Child(name, [*base, *args]) for name, args in processes}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    def start(self) -> AppProcesses:
        for child in self.children.values():
            self._launch(child)
        self._watcher.start()
        return self

    def pid(self, name: str) -> int | None:
        proc = self.children[name].proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        with self._lock:
            child = self.children[name]
            child.wanted = False
            if child.proc is not None and child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, sig)
                child.proc.wait()

    def crash(self, name: str) -> None:
        proc = self.children[name].proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def restart(self, name: str) -> None:
        with self._lock:
            child = self.children[name]
            if child.proc is not None:
                terminate(child.proc)
            child.wanted = True
            self._launch(child)

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        self._stopping.set()
        with self._lock:
            procs = [c.proc for c in self.children.values() if c.proc is not None]
            for child in self.children.values():
                child.wanted = False
        for proc in procs:  # SIGTERM all first so they shut down in parallel
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            terminate(proc, max(0.0, deadline - time.monotonic()))
        for child in self.children.values():
            if child.pump is not None:
                child.pump.join(timeout=2)

    def __enter__(self) -> AppProcesses:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _launch(self, child: Child) -> None:
        child.proc = spawn(child.argv, self.env)
        child.started_at = time.monotonic()
        assert child.proc.stdout is not None
        child.pump = threading.Thread(
            target=self.output.pump, args=(child.name, child.proc.stdout), daemon=True
        )
        child.pump.start()

    def _watch(self) -> None:
        due: dict[str, float] = {}
        while not self._stopping.wait(0.2):
            with self._lock:
                for child in self.children.values():
                    self._check(child, due)

    def _check(self, child: Child, due: dict[str, float]) -> None:
        proc = child.proc
        if proc is None or proc.poll() is None or not child.wanted or not self.autorestart:
            return
        now = time.monotonic()
        if child.name not in due:
            if now - child.started_at > HEALTHY_AFTER_SECONDS:
                child.restarts = 0
            delay = min(BACKOFF_MAX_SECONDS, BACKOFF_START_SECONDS * 2**child.restarts)
            due[child.name] = now + delay
            self.output.line(
                "launcher",
                f"{child.name} exited with code {proc.returncode}; restarting in {delay:.1f}s",
            )
        elif now >= due[child.name]:
            del due[child.name]
            child.restarts += 1
            self._launch(child)
            self.output.line(
                "launcher", f"{child.name} restarted (pid {child.proc and child.proc.pid})"
            )


def run_once(name: str, argv: Sequence[str], env: Mapping[str, str], output: Output) -> int:
    """Run a one-shot child (migrate) with prefixed output; return its exit code."""
    proc = spawn(argv, env)
    assert proc.stdout is not None
    try:
        output.pump(name, proc.stdout)
        return proc.wait()
    finally:
        terminate(proc)


def app_env(
    environ: Mapping[str, str], database_url: str, bootstrap: str, *, own_postgres: bool
) -> dict[str, str]:
    """The environment of migrate and the app processes."""
    env = {
        **environ,
        "XENTREE_DATABASE_URL": database_url,
        "XENTREE_KAFKA_BOOTSTRAP": bootstrap,
        "PYTHONUNBUFFERED": "1",
    }
    if own_postgres:
        # Our own server, whose login user may create roles: migrate runs as that user and
        # the apps as a role that can append history but never change it (an explicit
        # XENTREE_DATABASE_ROLE, even an empty one, wins).
        env.setdefault("XENTREE_DATABASE_ROLE", APP_ROLE)
    return env


def log_in_as_app_role(env: Mapping[str, str], owner_url: str) -> dict[str, str]:
    """The app processes' environment on our own server: they log in as the application
    role itself (trust authentication on loopback), not as the owner switching to it, so
    nothing they run can switch back to a role that may change history."""
    role = env.get("XENTREE_DATABASE_ROLE", "")
    if not role:
        return dict(env)
    import psycopg
    from psycopg import sql

    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)))
    parts = urlsplit(owner_url)
    host = parts.netloc.rpartition("@")[2]
    login = urlunsplit(parts._replace(netloc=f"{quote(role)}@{host}"))
    return {**env, "XENTREE_DATABASE_URL": login, "XENTREE_DATABASE_ROLE": ""}


class _Shutdown(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the Xentree Live dev stack.")
    parser.add_argument(
        "--command",
        default=None,
        help="program to run the app processes with (default: xentree-live next to python)",
    )
    args = parser.parse_args(argv)
    command = [args.command or cli_path()]
    settings = load_settings()
    out = Output()

    def say(text: str) -> None:
        out.line("launcher", text)

    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise _Shutdown(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    postgres: EmbeddedPostgres | None = None
    kafka: EmbeddedKafka | None = None
    apps: AppProcesses | None = None
    code = 0
    try:
        state = settings.state_path
        database_url = os.environ.get("XENTREE_DATABASE_URL", "").strip()
        if not database_url:
            postgres = EmbeddedPostgres(
                state / "pg", EMBEDDED_PG_PORT, log_path=state / "logs" / "postgres.log"
            )
            say(f"starting PostgreSQL (data {postgres.data_dir}, log {postgres.log_path})")
            database_url = postgres.start()
        bootstrap = os.environ.get("XENTREE_KAFKA_BOOTSTRAP", "").strip()
        if not bootstrap:
            port = settings.kafka_bootstrap.rpartition(":")[2]
            kafka = EmbeddedKafka(int(port), log_path=state / "logs" / "tansu.log")
            say(f"starting Tansu (memory storage, log {kafka.log_path})")
            bootstrap = kafka.start()
        env = app_env(os.environ, database_url, bootstrap, own_postgres=postgres is not None)
        say("migrating")
        migrate = run_once("migrate", [*command, "migrate"], env, out)
        if migrate != 0:
            say(f"migrate failed with exit code {migrate}; stopping")
            return 1
        role = env.get("XENTREE_DATABASE_ROLE", "")
        if postgres is not None:
            env = log_in_as_app_role(env, database_url)
        apps = AppProcesses(env, PROCESSES, command=command, output=out).start()
        host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "") else settings.api_host
        api = f"http://{host}:{settings.api_port}"
        say(f"API         {api}")
        say(f"OpenAPI     {api}/schema")
        say(f"PostgreSQL  {database_url}")
        if role:
            how = "log in as it" if postgres is not None else "switch to it"
            say(f"App role    {role} (the apps {how}: appends history, cannot change it)")
        say(f"Kafka       {bootstrap}")
        while True:
            try:
                wait_for_http(f"{api}/healthz", timeout=60)
                break
            except TimeoutError as exc:
                say(f"still waiting for the API: {exc}")
        out.raw("xentree-live ready")
        while True:
            time.sleep(3600)
    except _Shutdown as exc:
        say(f"{exc}: shutting down")
    except Exception as exc:
        say(f"error: {exc}")
        code = 1
    finally:
        stopping = True
        if apps is not None:
            apps.stop()
        if kafka is not None:
            kafka.stop()
        if postgres is not None:
            postgres.stop()
        say("stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
