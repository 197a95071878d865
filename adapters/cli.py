"""`xentree-live`: the operator CLI and the process entry points.

Every command prints its result as the last line of stdout and exits non-zero with a
clear message on error."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from types import FrameType

import msgspec

from adapters.audit.cli import add_parsers as add_audit_parsers
from application.settings import Settings, load_settings


def _now() -> datetime:
    return datetime.now(UTC)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> str:
    from adapters.eventstore.schema import migrate

    migrate(settings)
    return "schema up to date"


def cmd_api(settings: Settings, args: argparse.Namespace) -> str:
    import uvicorn

    uvicorn.run(
        "adapters.http.app:app_from_env",
        factory=True,
        host=args.host or settings.api_host,
        port=args.port or settings.api_port,
        workers=args.workers or settings.api_workers,
        loop="uvloop",
        http="httptools",
        access_log=False,  # query strings may hold tokens; metrics count requests instead
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    return "api stopped"


def cmd_relay(settings: Settings, _args: argparse.Namespace) -> str:
    from adapters.relay.relay import run_relay

    run_relay(settings, _stop_on_signals())
    return "relay stopped"


def cmd_project(settings: Settings, args: argparse.Namespace) -> str:
    from adapters.projector.runner import PROJECTIONS, run_projectors

    names = tuple(args.projection) if args.projection else tuple(PROJECTIONS)
    run_projectors(settings, _stop_on_signals(), names=names)
    return "projectors stopped"


def cmd_reaper(settings: Settings, _args: argparse.Namespace) -> str:
    from adapters.reaper import run_reaper

    run_reaper(settings, _stop_on_signals(), _now)
    return "reaper stopped"


def cmd_realtime(settings: Settings, _args: argparse.Namespace) -> str:
    from functools import partial

    from adapters.auth.errors import AuthenticationError
    from adapters.eventstore.session_ends import follow_session_ends
    from adapters.http.services import build_services
    from adapters.integration.tokens import is_integration_token
    from application.principal import Principal
    from application.settings import parse_database_url
    from realtime.bridge import BridgeDeps
    from realtime.server import run

    logging.getLogger("websockets").setLevel(logging.WARNING)  # one line per socket
    services = build_services(settings)

    def authenticate(token: str) -> Principal | None:
        # As the HTTP API does: the token's typ says which verifier judges it.
        try:
            if is_integration_token(token):
                return services.integration_tokens.authenticate(token)
            return services.bearer.verify(token)
        except AuthenticationError:
            return None

    try:
        conninfo = parse_database_url(settings.database_url).conninfo()
        run(BridgeDeps(
            settings=settings,
            app=services.live,
            authenticate=authenticate,
            now=_now,
            session_ends=partial(follow_session_ends, conninfo),
        ))
    finally:
        services.close()
    return "realtime bridge stopped"


def cmd_engine(settings: Settings, args: argparse.Namespace) -> str:
    from realtime.engine import serve_engine
    from realtime.server import run_until_signalled

    logging.getLogger("websockets").setLevel(logging.WARNING)
    run_until_signalled(
        lambda stop: serve_engine(settings.engine_url, stop, word_seconds=args.word_seconds)
    )
    return "engine stopped"


def _check_owner(tenant: str, user: str) -> None:
    """The ids a credential would carry; anything else could never be used or reached."""
    from adapters.auth.identifiers import is_valid_identifier

    for flag, value in (("--tenant", tenant), ("--user", user)):
        if not is_valid_identifier(value):
            raise ValueError(f"{flag} must be 1-200 characters without whitespace")


def cmd_dev_token(settings: Settings, args: argparse.Namespace) -> str:
    from adapters.auth.dev_issuer import DevIssuer
    from adapters.auth.scopes import parse_scope

    # A malformed scope string would make a token every endpoint refuses as invalid.
    parse_scope(args.scope, allow_unknown=True)
    return DevIssuer.load_or_create(settings).mint(args.tenant, args.user, args.scope, args.ttl)


def cmd_plan_assign(settings: Settings, args: argparse.Namespace) -> str:
    from adapters.bootstrap import build_application

    _check_owner(args.tenant, args.user)
    if args.max_session_seconds is not None and args.max_session_seconds <= 0:
        # The use case reads "not given" as the default; 0 must not slip through as that.
        raise ValueError("--max-session-seconds must be positive")
    app = build_application(settings)
    try:
        answer = app.assign_plan(
            args.tenant, args.user, args.plan, args.seconds, args.max_session_seconds, _now
        )
    finally:
        app.close()
    if answer.position is not None and args.wait > 0:
        _wait_for_read_models(settings, answer.position, ("quota", "profile"), args.wait)
    return answer.body.decode()


def _wait_for_read_models(
    settings: Settings, position: int, names: tuple[str, ...], timeout: float
) -> None:
    """Return once the read models show the change at `position` (what the API then
    answers), or say on stderr that they had not after `timeout` seconds (no projector
    running, say); the change itself is stored either way."""
    import psycopg

    from adapters.readmodels import watermark
    from application.settings import parse_database_url

    deadline = time.monotonic() + timeout
    conninfo = parse_database_url(settings.database_url).conninfo()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while min(watermark(conn, name) for name in names) < position:
            if time.monotonic() >= deadline:
                print(f"note: the read models had not reached position {position} after "
                      f"{timeout:g} s; the API shows the change once they do", file=sys.stderr)
                return
            time.sleep(0.02)


def cmd_api_key_create(settings: Settings, args: argparse.Namespace) -> str:
    from adapters.auth.api_keys import (
        KEY_SCOPES,
        check_key_request,
        generate_api_key,
        hash_api_key,
        load_pepper,
    )
    from adapters.auth.scopes import parse_scope
    from adapters.bootstrap import build_application
    from application.principal import Principal

    _check_owner(args.tenant, args.user)
    scopes = parse_scope(args.scope)
    # The operator stands in for the user, who may hold any key scope.
    check_key_request(scopes, KEY_SCOPES, args.name)
    principal = Principal(
        tenant_id=args.tenant, user_id=args.user, scopes=scopes, credential="bearer"
    )
    key_id, key = generate_api_key()
    app = build_application(settings)
    try:
        app.issue_api_key(
            principal, key_id, hash_api_key(key, load_pepper(settings)), args.name,
            sorted(scopes), _now,
        )
    finally:
        app.close()
    print(f"key_id {key_id}", file=sys.stderr)
    return key


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xentree-live", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="create or update the database schema").set_defaults(
        run=cmd_migrate
    )
    api = sub.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.add_argument("--workers", type=int)
    api.set_defaults(run=cmd_api)
    sub.add_parser("relay", help="publish stored events to Kafka").set_defaults(run=cmd_relay)
    project = sub.add_parser("project", help="run the Kafka-fed projections")
    project.add_argument(
        "projection",
        nargs="*",
        help="quota, sessions, profile, transcripts, revocations, revocation_cutoffs "
        "(default: all)",
    )
    project.set_defaults(run=cmd_project)
    sub.add_parser("reaper", help="end idle and over-limit sessions").set_defaults(
        run=cmd_reaper
    )
    sub.add_parser(
        "realtime", help="serve the realtime websocket bridge (XENTREE_REALTIME_HOST/PORT)"
    ).set_defaults(run=cmd_realtime)
    engine = sub.add_parser(
        "engine", help="serve the reference upstream engine at XENTREE_ENGINE_URL"
    )
    engine.add_argument("--word-seconds", type=float, default=0.02,
                        help="pause between the words of an AI turn")
    engine.set_defaults(run=cmd_engine)

    token = sub.add_parser("dev-token", help="print a bearer JWT from the local dev issuer")
    token.add_argument("--tenant", required=True)
    token.add_argument("--user", required=True)
    token.add_argument("--scope", default="live:read live:write")
    token.add_argument("--ttl", type=int, default=3600)
    token.set_defaults(run=cmd_dev_token)

    plan = sub.add_parser("plan", help="plan management").add_subparsers(
        dest="plan_command", required=True
    )
    assign = plan.add_parser("assign", help="assign a plan to a user")
    assign.add_argument("--tenant", required=True)
    assign.add_argument("--user", required=True)
    assign.add_argument("--plan", required=True, choices=["free", "pro", "enterprise", "custom"])
    assign.add_argument("--seconds", type=int)
    assign.add_argument("--max-session-seconds", type=int)
    assign.add_argument("--wait", type=float, default=5.0, metavar="SECONDS",
                        help="wait up to this long for the API's reads to show the plan "
                        "(0: do not wait)")
    assign.set_defaults(run=cmd_plan_assign)

    keys = sub.add_parser("api-key", help="API key management").add_subparsers(
        dest="key_command", required=True
    )
    create = keys.add_parser("create", help="issue an API key and print it (shown once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--user", required=True)
    create.add_argument("--scope", default="live:read live:write")
    create.add_argument("--name", default="")
    create.set_defaults(run=cmd_api_key_create)
    add_audit_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from adapters.logs import configure

    configure()
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        result = args.run(settings, args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`audit export | head`); nothing more can reach it, and the
        # interpreter's final flush must not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        from domain.errors import DomainError, InvalidValue

        if isinstance(exc, InvalidValue):  # name the input, not only the rule it broke
            print(f"error: {exc.field}: {exc.reason}", file=sys.stderr)
            return 2
        if isinstance(exc, DomainError | ValueError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, OSError) and exc.filename is not None:  # a file named by a flag
            print(f"error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if isinstance(result, bytes | bytearray):
        result = msgspec.json.decode(result)
    if result is not None:  # commands that stream their output return nothing
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
