"""Benchmark: what psycopg spends in the API's interpreter turning one append's parameters
into what it sends, with the events in text form and in binary form, side by side.

    .venv/bin/python ops/bench_append_params.py             # own embedded PostgreSQL
    .venv/bin/python ops/bench_append_params.py --rounds 9 --commands 3000

The append function (adapters/eventstore/append.py) takes a command's events as an array
of the recorder's composite type. The events here are real: a session started, billed by
heartbeats and ended through `LiveApplication`, read back from the store, and sent two at
a time as a heartbeat sends them (the session's event and the ledger's). Each round times
the same parameters through psycopg's own query conversion and dumping (what
`cursor.execute` does before the round trip, nothing of the round trip) with the events'
placeholder as `%s` (text) and as `%b` (binary), alternating; the table gives the min and
median over the rounds, in microseconds per command.

PostgreSQL is needed only for the composite type's catalogue entry and the events.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from psycopg._queries import PostgresQuery  # what cursor.execute converts a query with
from psycopg.adapt import Transformer

from adapters.bootstrap import build_application
from adapters.eventstore.append import APPEND_CALL
from adapters.eventstore.chain import stored_timestamp
from adapters.eventstore.recorder import LiveRecorder
from adapters.eventstore.schema import migrate
from application.live import LiveApplication
from application.principal import Principal
from application.settings import Settings
from ops.stack import EmbeddedPostgres, free_port

BINARY_CALL = APPEND_CALL  # what the recorder sends: the events as `%b`
TEXT_CALL = APPEND_CALL.replace("(%b,", "(%s,", 1)


def sample_params(app: LiveApplication) -> list[tuple[Any, ...]]:
    """One append's parameters per heartbeat of a real session: its two stored events."""
    at = [datetime(2026, 12, 6, 10, 0, tzinfo=UTC)]

    def now() -> datetime:
        return at[0]

    who = Principal(tenant_id="bench", user_id="append-params",
                    scopes=frozenset({"live:read", "live:write"}), credential="bearer")
    sid = msgspec.json.decode(app.start_session(who, "voice", now).body)["session_id"]
    for _ in range(20):
        at[0] += timedelta(seconds=5)
        app.heartbeat(who, sid, now)
    app.end_session(who, sid, "client", now)
    recorder = cast(LiveRecorder, app.recorder)
    session = recorder.select_events(UUID(sid))
    ledger = recorder.select_events(app.ledger_for(who.tenant_id, who.user_id, now()).id)
    params: list[tuple[Any, ...]] = []
    for a, b in zip(session[1:], ledger[1:], strict=False):
        events = [recorder.construct_pg_stored_event(
            e.originator_id, e.originator_version, e.topic, e.state) for e in (a, b)]
        params.append((events, [stored_timestamp(e.state) for e in (a, b)], "5s",
                       None, None, None, None, None, [], [], [], []))
    return params


def per_command_us(conn: Any, query: str, params: list[tuple[Any, ...]], commands: int) -> float:
    start = time.perf_counter()
    for i in range(commands):
        values = params[i % len(params)]
        converted = PostgresQuery(Transformer(conn))
        converted.convert(query, values)
        converted.dump(values)
    return (time.perf_counter() - start) / commands * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--commands", type=int, default=2000, help="per round and form")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="xentree-bench-append-"))
    pg = EmbeddedPostgres(work / "pg", free_port(), log_path=work / "postgres.log")
    try:
        settings = Settings(database_url=pg.start())
        migrate(settings)
        app = build_application(settings)
        try:
            params = sample_params(app)
            with cast(LiveRecorder, app.recorder).datastore.get_connection() as conn:
                times: dict[str, list[float]] = {"text (%s)": [], "binary (%b)": []}
                per_command_us(conn, TEXT_CALL, params, 200)  # warm both paths
                per_command_us(conn, BINARY_CALL, params, 200)
                for _ in range(args.rounds):
                    for name, query in (("text (%s)", TEXT_CALL), ("binary (%b)", BINARY_CALL)):
                        times[name].append(per_command_us(conn, query, params, args.commands))
        finally:
            app.close()
    finally:
        pg.stop()
    state = statistics.mean(len(p[0][0].state) + len(p[0][1].state) for p in params)
    print(f"append parameters of {len(params)} heartbeats (two events, {state:.0f} bytes of "
          f"state per command); {args.rounds} rounds of {args.commands:,} commands each")
    print("| events sent as | min µs/command | median µs/command |")
    print("|---|---:|---:|")
    for name, values in times.items():
        print(f"| {name} | {min(values):.1f} | {statistics.median(values):.1f} |")


if __name__ == "__main__":
    main()
