"""Settings read once from the environment, with embedded-stack defaults.

Every process (API, relay, projector, reaper, CLI) builds one `Settings` at start and hands
it to the composition root; nothing else reads the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit, urlunsplit

import msgspec

PROJECT_ROOT = Path(__file__).resolve().parent.parent

EMBEDDED_PG_PORT = 54329
EMBEDDED_DATABASE_URL = f"postgresql://xentree@127.0.0.1:{EMBEDDED_PG_PORT}/xentree"
EMBEDDED_KAFKA_BOOTSTRAP = "127.0.0.1:9092"


class PlanDefaults(msgspec.Struct, frozen=True):
    free_seconds: int = 600
    pro_seconds: int = 36_000
    enterprise_seconds: int = 360_000
    max_session_seconds: int = 3_600


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str = EMBEDDED_DATABASE_URL
    kafka_bootstrap: str = EMBEDDED_KAFKA_BOOTSTRAP
    kafka_topic: str = "xentree.live.events"
    # Partitions of a topic the relay or projector creates (an existing topic keeps its
    # own). One keeps the whole stream in commit order, the watermark (the minimum over
    # partitions) waits for no laggard partition, and the relay's rounds become one stored
    # batch each instead of one per partition (the embedded Tansu lists every stored batch
    # of a partition on each fetch). More let an analysts' consumer group read in
    # parallel. README "Tuning" has the measurements.
    kafka_partitions: int = 1
    state_dir: str = str(PROJECT_ROOT / ".xentree")
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_workers: int = 1
    public_base_url: str = "http://127.0.0.1:8000"
    realtime_url: str = "ws://127.0.0.1:8765"
    # The realtime bridge (SPEC section 7) and its upstream engine.
    realtime_host: str = "127.0.0.1"
    realtime_port: int = 8765
    realtime_tls_cert: str = ""
    realtime_tls_key: str = ""
    # Allowed browser origins; empty allows any. Clients that send no Origin (non-browser)
    # are always allowed: they authenticate with the Authorization header.
    realtime_allowed_origins: tuple[str, ...] = ()
    realtime_max_frame_bytes: int = 64 * 1024
    realtime_max_messages_per_second: int = 100
    realtime_max_queued_events: int = 256
    engine_url: str = "ws://127.0.0.1:8766"
    # Bearer tokens from the identity provider.
    jwt_issuer: str = "https://id.xentree.local/"
    jwt_audience: str = "xentree-live"
    jwt_leeway_seconds: int = 30
    jwks_file: str = ""
    jwks_url: str = ""
    dev_issuer: bool = True
    # Secrets.
    api_key_pepper: str = ""
    service_keys: tuple[str, ...] = ()
    # A tenant whose audit:read credentials may read every tenant's history ("" = none).
    audit_platform_tenant: str = ""
    # Quota and sessions.
    plans: PlanDefaults = PlanDefaults()
    default_plan: str = "free"
    heartbeat_interval_seconds: int = 15
    idle_timeout_seconds: int = 60
    max_concurrent_sessions: int = 1
    reaper_interval_seconds: float = 1.0
    # HTTP.
    max_body_bytes: int = 2 * 1024 * 1024
    read_wait_seconds: float = 2.0
    readiness_max_lag: int = 1000
    db_pool_size: int = 8
    db_max_overflow: int = 8
    # Threads per API process running commands on the event store (the write path), and
    # threads for the rest of its blocking work (reads in threads, audit, readiness).
    command_threads: int = 8
    api_threads: int = 40
    # Relay and projections.
    relay_batch_size: int = 500
    relay_poll_seconds: float = 0.5
    # After a notification, how long the relay lets more commits gather before it reads
    # the log: fewer, larger batches (one produce, one position write each, and one
    # stored batch that the embedded broker lists on every later fetch) for that much
    # more lag (README "Tuning").
    relay_linger_ms: int = 25
    projection_batch_size: int = 500
    # After a batch short of the batch size, how long a projector lets more events gather
    # before it fetches again: fewer, larger transactions for that much more lag.
    projection_linger_ms: int = 10
    # Integration tokens (SPEC section 5).
    master_key: str = ""
    integration_issuer: str = "https://live.xentree.local/integration"
    integration_audience: str = "xentree-live-embed"
    rate_limit_window_seconds: int = 60
    rate_limit_verify: int = 6_000
    rate_limit_grant: int = 600
    rate_limit_rotate: int = 600

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    def plan_seconds(self, plan: str) -> int:
        return {
            "free": self.plans.free_seconds,
            "pro": self.plans.pro_seconds,
            "enterprise": self.plans.enterprise_seconds,
        }.get(plan, self.plans.free_seconds)


class DatabaseParams(msgspec.Struct, frozen=True):
    host: str
    port: int
    dbname: str
    user: str
    password: str
    # The application role every connection switches to (`-c role=...` in libpq's startup
    # options): it may read and append history but never change it. Empty: no switch.
    role: str = ""

    @property
    def options(self) -> str:
        # Every timestamptz read back is in UTC whatever the server's TimeZone, so answers
        # write times as RFC 3339 UTC (`...Z`), as the contract says, on any server.
        utc = "-c TimeZone=UTC"
        return f"{utc} -c role={self.role}" if self.role else utc

    def conninfo(self) -> str:
        parts = {
            "host": self.host,
            "port": str(self.port),
            "dbname": self.dbname,
            "user": self.user,
            "password": self.password,
            "options": self.options,
        }
        return " ".join(f"{k}='{v}'" for k, v in parts.items() if v != "")

    def as_owner(self) -> DatabaseParams:
        """The same server as the login user itself (schema setup, rebuild switch-overs)."""
        return msgspec.structs.replace(self, role="")


def parse_database_url(url: str) -> DatabaseParams:
    """Split a postgresql:// URL into the parts psycopg and eventsourcing take."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"XENTREE_DATABASE_URL must be a postgresql:// URL, not {url!r}")
    return DatabaseParams(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        dbname=unquote(parts.path.lstrip("/")) or "postgres",
        user=unquote(parts.username or "postgres"),
        password=unquote(parts.password or ""),
        role=_role_option(parse_qs(parts.query).get("options", [""])[0]),
    )


_ROLE_OPTION = re.compile(r"^-c\s*role=([A-Za-z_][A-Za-z0-9_]*)$")


def _role_option(options: str) -> str:
    if not options.strip():
        return ""
    match = _ROLE_OPTION.match(options.strip())
    if match is None:
        raise ValueError("the database URL's options may only be '-c role=<name>'")
    return match.group(1)


def with_role(url: str, role: str) -> str:
    """`url` whose connections switch to `role` (XENTREE_DATABASE_ROLE)."""
    if not role:
        return url
    _role_option(f"-c role={role}")  # validates the name
    parts = urlsplit(url)
    options = urlencode({"options": f"-c role={role}"}, quote_via=quote)
    return urlunsplit(parts._replace(query=options))


def _int(env: Mapping[str, str], key: str, default: int, *, minimum: int | None = None) -> int:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{key} must be an integer, not {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{key} must be at least {minimum}, not {value}")
    return value


def _bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key, "").strip().lower()
    if not raw:
        return default
    return raw in ("1", "true", "yes", "on")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    d = Settings()
    plans = PlanDefaults(
        free_seconds=_int(env, "XENTREE_PLAN_FREE_SECONDS", d.plans.free_seconds),
        pro_seconds=_int(env, "XENTREE_PLAN_PRO_SECONDS", d.plans.pro_seconds),
        enterprise_seconds=_int(
            env, "XENTREE_PLAN_ENTERPRISE_SECONDS", d.plans.enterprise_seconds
        ),
        max_session_seconds=_int(
            env, "XENTREE_MAX_SESSION_SECONDS", d.plans.max_session_seconds
        ),
    )
    api_port = _int(env, "XENTREE_API_PORT", d.api_port)
    api_host = env.get("XENTREE_API_HOST", d.api_host)
    service_keys = tuple(
        k.strip() for k in env.get("XENTREE_SERVICE_KEYS", "").split(",") if k.strip()
    )
    return Settings(
        database_url=with_role(
            env.get("XENTREE_DATABASE_URL", "").strip() or d.database_url,
            env.get("XENTREE_DATABASE_ROLE", "").strip(),
        ),
        kafka_bootstrap=env.get("XENTREE_KAFKA_BOOTSTRAP", "").strip() or d.kafka_bootstrap,
        kafka_topic=env.get("XENTREE_KAFKA_TOPIC", "").strip() or d.kafka_topic,
        kafka_partitions=_int(env, "XENTREE_KAFKA_PARTITIONS", d.kafka_partitions,
                              minimum=1),
        state_dir=env.get("XENTREE_STATE_DIR", "").strip() or d.state_dir,
        api_host=api_host,
        api_port=api_port,
        api_workers=_int(env, "XENTREE_API_WORKERS", d.api_workers),
        public_base_url=env.get("XENTREE_PUBLIC_BASE_URL", "").strip()
        or f"http://{api_host}:{api_port}",
        realtime_url=env.get("XENTREE_REALTIME_URL", "").strip() or _realtime_url(env, d),
        realtime_host=env.get("XENTREE_REALTIME_HOST", "").strip() or d.realtime_host,
        realtime_port=_int(env, "XENTREE_REALTIME_PORT", d.realtime_port),
        realtime_tls_cert=env.get("XENTREE_REALTIME_TLS_CERT", "").strip(),
        realtime_tls_key=env.get("XENTREE_REALTIME_TLS_KEY", "").strip(),
        realtime_allowed_origins=tuple(
            o.strip()
            for o in env.get("XENTREE_REALTIME_ALLOWED_ORIGINS", "").split(",")
            if o.strip()
        ),
        realtime_max_frame_bytes=_int(
            env, "XENTREE_REALTIME_MAX_FRAME_BYTES", d.realtime_max_frame_bytes
        ),
        realtime_max_messages_per_second=_int(
            env, "XENTREE_REALTIME_MAX_MESSAGES_PER_SECOND", d.realtime_max_messages_per_second
        ),
        realtime_max_queued_events=_int(
            env, "XENTREE_REALTIME_MAX_QUEUED_EVENTS", d.realtime_max_queued_events
        ),
        engine_url=env.get("XENTREE_ENGINE_URL", "").strip() or d.engine_url,
        jwt_issuer=env.get("XENTREE_JWT_ISSUER", "").strip() or d.jwt_issuer,
        jwt_audience=env.get("XENTREE_JWT_AUDIENCE", "").strip() or d.jwt_audience,
        jwt_leeway_seconds=_int(env, "XENTREE_JWT_LEEWAY_SECONDS", d.jwt_leeway_seconds),
        jwks_file=env.get("XENTREE_JWKS_FILE", "").strip(),
        jwks_url=env.get("XENTREE_JWKS_URL", "").strip(),
        dev_issuer=_bool(env, "XENTREE_DEV_ISSUER", d.dev_issuer),
        api_key_pepper=env.get("XENTREE_API_KEY_PEPPER", "").strip(),
        service_keys=service_keys,
        audit_platform_tenant=env.get("XENTREE_AUDIT_PLATFORM_TENANT", "").strip(),
        plans=plans,
        default_plan=env.get("XENTREE_DEFAULT_PLAN", "").strip() or d.default_plan,
        heartbeat_interval_seconds=_int(
            env, "XENTREE_HEARTBEAT_INTERVAL_SECONDS", d.heartbeat_interval_seconds
        ),
        idle_timeout_seconds=_int(env, "XENTREE_IDLE_TIMEOUT_SECONDS", d.idle_timeout_seconds),
        max_concurrent_sessions=_int(
            env, "XENTREE_MAX_CONCURRENT_SESSIONS", d.max_concurrent_sessions
        ),
        reaper_interval_seconds=float(
            env.get("XENTREE_REAPER_INTERVAL_SECONDS", "") or d.reaper_interval_seconds
        ),
        max_body_bytes=_int(env, "XENTREE_MAX_BODY_BYTES", d.max_body_bytes),
        read_wait_seconds=float(env.get("XENTREE_READ_WAIT_SECONDS", "") or d.read_wait_seconds),
        readiness_max_lag=_int(env, "XENTREE_READINESS_MAX_LAG", d.readiness_max_lag),
        db_pool_size=_int(env, "XENTREE_DB_POOL_SIZE", d.db_pool_size),
        db_max_overflow=_int(env, "XENTREE_DB_MAX_OVERFLOW", d.db_max_overflow),
        command_threads=_int(env, "XENTREE_API_COMMAND_THREADS", d.command_threads, minimum=1),
        api_threads=_int(env, "XENTREE_API_THREADS", d.api_threads, minimum=1),
        relay_batch_size=_int(env, "XENTREE_RELAY_BATCH_SIZE", d.relay_batch_size),
        relay_poll_seconds=float(
            env.get("XENTREE_RELAY_POLL_SECONDS", "") or d.relay_poll_seconds
        ),
        relay_linger_ms=_int(env, "XENTREE_RELAY_LINGER_MS", d.relay_linger_ms),
        projection_batch_size=_int(
            env, "XENTREE_PROJECTION_BATCH_SIZE", d.projection_batch_size
        ),
        projection_linger_ms=_int(env, "XENTREE_PROJECTION_LINGER_MS", d.projection_linger_ms),

        master_key=env.get("XENTREE_MASTER_KEY", "").strip(),
        integration_issuer=env.get("XENTREE_INTEGRATION_ISSUER", "").strip()
        or d.integration_issuer,
        integration_audience=env.get("XENTREE_INTEGRATION_AUDIENCE", "").strip()
        or d.integration_audience,
        rate_limit_window_seconds=_int(
            env, "XENTREE_RATE_LIMIT_WINDOW_SECONDS", d.rate_limit_window_seconds
        ),
        rate_limit_verify=_int(env, "XENTREE_RATE_LIMIT_VERIFY", d.rate_limit_verify),
        rate_limit_grant=_int(env, "XENTREE_RATE_LIMIT_GRANT", d.rate_limit_grant),
        rate_limit_rotate=_int(env, "XENTREE_RATE_LIMIT_ROTATE", d.rate_limit_rotate),
    )


def _realtime_url(env: Mapping[str, str], d: Settings) -> str:
    """The bridge's own address when XENTREE_REALTIME_URL is unset (a wildcard bind host
    is reached on loopback), so clients handed the URL find a bridge on another port."""
    host = env.get("XENTREE_REALTIME_HOST", "").strip() or d.realtime_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    port = _int(env, "XENTREE_REALTIME_PORT", d.realtime_port)
    tls = env.get("XENTREE_REALTIME_TLS_CERT", "").strip()
    return f"{'wss' if tls else 'ws'}://{host}:{port}"
