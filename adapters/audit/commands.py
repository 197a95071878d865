"""The auditor's commands (parsers in adapters/audit/cli.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from adapters.audit.digest import DigestSigner, encode_digest, load_digest
from adapters.audit.history import History, Selection, UnknownOwner
from adapters.audit.rebuild import check, chosen, rebuild
from adapters.audit.replay import replay
from adapters.eventstore import chain
from adapters.relay.envelope import encode
from application.settings import Settings, parse_database_url

_encoder = msgspec.json.Encoder()


class AuditFailed(ValueError):
    """A check found a difference: the CLI exits non-zero with this message."""


def _verdict(failed: AuditFailed) -> AuditFailed:
    """A failed check's verdict is still its result: the last line of stdout, as an
    intact one's would be (the CLI also writes the error to stderr)."""
    print(failed, flush=True)
    return failed


@contextmanager
def _history(settings: Settings, *, owner: bool = False) -> Iterator[tuple[Any, History]]:
    from adapters.bootstrap import build_application

    params = parse_database_url(settings.database_url)
    app = build_application(settings)
    try:
        conninfo = (params.as_owner() if owner else params).conninfo()
        with psycopg.connect(conninfo, autocommit=True) as conn:
            yield conn, History(conn, app.mapper)
    finally:
        app.close()


def _verify(settings: Settings, digest_file: str | None) -> tuple[chain.Verdict, str]:
    digest = signer = None
    if digest_file:
        digest = load_digest(Path(digest_file))
        signer = DigestSigner.load_or_create(settings)
        signer.check(digest)
    conninfo = parse_database_url(settings.database_url).conninfo()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        verdict, at_digest = chain.verify(conn, digest.position if digest else None)
    where = f"position {verdict.position} head {verdict.head.hex()}"
    if not verdict.ok:
        raise AuditFailed(
            f"hash chain broken at position {verdict.broken_at}: {verdict.reason} "
            f"(intact up to {where})"
        )
    if digest is not None:
        if at_digest is None or at_digest.hex() != digest.head:
            raise AuditFailed(
                f"history up to position {digest.position} differs from the signed digest "
                f"(digest head {digest.head}, now {at_digest.hex() if at_digest else 'absent'})"
            )
        where += f"; matches digest at position {digest.position}"
    return verdict, where


def cmd_verify(settings: Settings, args: argparse.Namespace) -> str:
    try:
        verdict, where = _verify(settings, args.digest)
    except AuditFailed as failed:
        raise _verdict(failed) from None
    return f"chain intact: {verdict.events} events, {where}"


def cmd_digest(settings: Settings, args: argparse.Namespace) -> str:
    verdict, _ = _verify(settings, None)  # never sign a history that does not verify
    signer = DigestSigner.load_or_create(settings)
    encoded = encode_digest(signer.sign(verdict.position, verdict.head, datetime.now(UTC)))
    if args.output:
        Path(args.output).write_bytes(encoded + b"\n")
    return encoded.decode()


def cmd_export(settings: Settings, args: argparse.Namespace) -> str | None:
    if args.since and args.until and args.since > args.until:
        raise ValueError("--since is later than --until: no event could be in between")
    selection = Selection(tenant=args.tenant, user=args.user, since=args.since, until=args.until)
    with ExitStack() as stack:
        conn_history = stack.enter_context(_history(settings))
        out = (
            stack.enter_context(Path(args.output).open("wb"))
            if args.output
            else sys.stdout.buffer
        )
        count = last = 0
        owned = False
        for envelope in conn_history[1].envelopes(args.after):
            last = envelope.position
            if selection.owns(envelope):
                owned = True
                if selection.matches(envelope):
                    out.write(encode(envelope) + b"\n")
                    count += 1
        out.flush()
    if not owned and args.after == 0 and (args.tenant is not None or args.user is not None):
        raise UnknownOwner(args.tenant, args.user)
    summary = f"exported {count} events (scanned up to position {last})"
    print(summary, file=sys.stderr)
    # On stdout only when the events went to a file: there, every line is an event.
    return f"{summary} to {args.output}" if args.output else None


def cmd_replay(settings: Settings, args: argparse.Namespace) -> str:
    with _history(settings) as (_conn, history):
        return _encoder.encode(replay(history, args.tenant, args.user, args.until)).decode()


def cmd_rebuild(settings: Settings, args: argparse.Namespace) -> str:
    specs = chosen(args.projection)
    with _history(settings, owner=not args.check) as (conn, history):
        if args.check:
            reports = [r.summary() for r in check(conn, history, specs)]
        else:
            reports = [rebuild(conn, history, n, s).summary() for n, s in specs.items()]
    for report in reports:
        print(_encoder.encode(report).decode())
    if args.check:
        bad = [r["projection"] for r in reports if not r["ok"]]
        if bad:
            differ = AuditFailed(f"rebuilt rows differ from the live ones: {', '.join(bad)}")
            raise _verdict(differ)
        return f"rebuilt rows equal the live ones: {', '.join(specs)}"
    return f"rebuilt and switched: {', '.join(specs)}"


def cmd_schemas(_settings: Settings, args: argparse.Namespace) -> str:
    from adapters.audit import event_schemas

    if args.write:
        written = event_schemas.write(Path(args.write))
        return f"wrote {len(written)} event schemas to {args.write}"
    return _encoder.encode(event_schemas.schemas()).decode()
