"""`xentree-live audit ...` and `xentree-live projections rebuild`: the auditor's commands.

Parsers only; the commands (and their imports of psycopg and Kafka clients) load when run.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from application.settings import Settings

Command = Callable[[Settings, argparse.Namespace], Any]


def instant(text: str) -> datetime:
    """An RFC 3339 instant (its `T` and `Z` in either case); one without an offset is
    taken as UTC."""
    try:
        parsed = datetime.fromisoformat(text.strip().upper())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an RFC 3339 instant such as 2026-11-24T12:00:00Z: {text!r}"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def position(text: str) -> int:
    """A position in the event store: a whole number, 0 for the beginning."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a position (a whole number >= 0): {text!r}")
    return value


def _lazy(name: str) -> Command:
    def run(settings: Settings, args: argparse.Namespace) -> Any:
        command: Command = getattr(importlib.import_module("adapters.audit.commands"), name)
        return command(settings, args)

    return run


def add_parsers(sub: Any) -> None:
    audit = sub.add_parser("audit", help="auditors' commands").add_subparsers(
        dest="audit_command", required=True
    )
    verify = audit.add_parser("verify", help="verify the hash chain over the whole history")
    verify.add_argument("--digest", help="also prove history up to this signed digest")
    verify.set_defaults(run=_lazy("cmd_verify"))
    digest = audit.add_parser("digest", help="print a signed digest of the chain's head")
    digest.add_argument("--output", help="also write it to this file")
    digest.set_defaults(run=_lazy("cmd_digest"))
    export = audit.add_parser("export", help="JSON lines of CloudEvents envelopes")
    export.add_argument("--tenant")
    export.add_argument("--user")
    export.add_argument("--since", type=instant, help="event time, inclusive")
    export.add_argument("--until", type=instant, help="event time, inclusive")
    export.add_argument("--after", type=position, default=0, help="start after this position")
    export.add_argument("--output", help="write to this file instead of stdout")
    export.set_defaults(run=_lazy("cmd_export"))
    replay_ = audit.add_parser("replay", help="a user's quota and sessions at an instant")
    replay_.add_argument("--tenant", required=True)
    replay_.add_argument("--user", required=True)
    replay_.add_argument("--until", required=True, type=instant)
    replay_.set_defaults(run=_lazy("cmd_replay"))

    projections = sub.add_parser("projections", help="read-model maintenance").add_subparsers(
        dest="projections_command", required=True
    )
    rebuild_ = projections.add_parser(
        "rebuild", help="rebuild read models from the event store and switch to them"
    )
    rebuild_.add_argument("projection", nargs="*", help="default: every projection")
    rebuild_.add_argument(
        "--check", action="store_true",
        help="only compare rebuilt rows with the live ones; exit non-zero on any difference",
    )
    rebuild_.set_defaults(run=_lazy("cmd_rebuild"))
    schemas = audit.add_parser("schemas", help="JSON Schemas of every event type")
    schemas.add_argument("--write", metavar="DIR", help="write <type>.json files into DIR")
    schemas.set_defaults(run=_lazy("cmd_schemas"))
