#!/usr/bin/env python3
"""Live seconds per tenant per UTC day, computed from the Xentree Live Kafka stream.

An analyst's first consumer: it depends on nothing but `kafka-python` and the standard
library, so it can be copied out of this repository and run anywhere the broker is
reachable. The stream's contract is `docs/kafka-stream.md`; what this example relies on:

- every message value is one CloudEvents 1.0 JSON envelope;
- a user's billed seconds are the `seconds` of `xentree.live.UsageLedger.UsageBilled`
  (a heartbeat) and `xentree.live.UsageLedger.SessionClosed` (the last stretch of a
  session) events; their sum per ledger is the quota's `used_seconds`;
- the `tenantid` extension names the tenant, `time` (UTC, RFC 3339) when it was recorded;
- delivery is at least once: a relay restart or a recreated topic publishes events again
  with the same `id`, so the consumer counts each `id` once.

It joins its own consumer group (so it never steals partitions from the projections),
always reads every partition from the beginning and commits nothing: the totals are
computed in memory, so a rerun recomputes them from the whole history. It stops when no
message has arrived for `--idle-timeout` seconds once it has its partitions.

    python ops/examples/live_seconds_per_day.py --group analyst-$USER
    python ops/examples/live_seconds_per_day.py --group analyst-$USER --json --idle-timeout 10

The consumer-group timeouts default to short values because Tansu (the broker `./ops/run`
starts) completes a group join only after about half the session timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition

BILLED_TYPES = frozenset(
    {"xentree.live.UsageLedger.UsageBilled", "xentree.live.UsageLedger.SessionClosed"}
)
NO_TENANT = "-"

# Short group timeouts: with Tansu a join takes about half the session timeout.
GROUP_SETTINGS: dict[str, Any] = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
    "max_poll_interval_ms": 10000,
}


@dataclass
class Totals:
    """The result: seconds per (tenant, UTC day), and what was read to get them."""

    seconds: dict[tuple[str, date], int] = field(default_factory=lambda: defaultdict(int))
    messages: int = 0  # every message read, duplicates included
    duplicates: int = 0  # messages whose CloudEvent id was already counted
    billed_events: int = 0  # distinct UsageBilled / SessionClosed events
    seen_ids: set[str] = field(default_factory=set, repr=False)

    def add(self, envelope: Mapping[str, Any]) -> None:
        """Count one envelope; a repeated `id` is ignored."""
        self.messages += 1
        event_id = envelope["id"]
        if event_id in self.seen_ids:
            self.duplicates += 1
            return
        self.seen_ids.add(event_id)
        if envelope.get("type") not in BILLED_TYPES:
            return
        seconds = int(envelope["data"]["seconds"])
        day = parse_time(envelope["time"]).date()
        self.seconds[(envelope.get("tenantid") or NO_TENANT, day)] += seconds
        self.billed_events += 1

    def per_tenant(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for (tenant, _), seconds in self.seconds.items():
            out[tenant] += seconds
        return dict(out)

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"tenant": tenant, "day": day.isoformat(), "live_seconds": seconds}
            for (tenant, day), seconds in sorted(self.seconds.items())
        ]


def parse_time(value: str) -> datetime:
    """An RFC 3339 `time` as an aware UTC datetime (`Z` or an offset)."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


class _FromTheBeginning(ConsumerRebalanceListener):  # type: ignore[misc]
    """Seek every assigned partition to its start, whatever the group committed before."""

    def __init__(self, consumer: KafkaConsumer) -> None:
        self.consumer = consumer
        self.assigned = False

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        pass

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        partitions = list(assigned)
        if partitions:
            self.consumer.seek_to_beginning(*partitions)
        self.assigned = True


def live_seconds_per_day(
    bootstrap: str,
    topic: str,
    group_id: str,
    idle_timeout: float = 5.0,
    join_timeout: float = 60.0,
    **consumer_settings: Any,
) -> Totals:
    """Read `topic` from the beginning as consumer group `group_id` and total the billed
    seconds per tenant and UTC day, until nothing arrives for `idle_timeout` seconds.

    `join_timeout` bounds the wait for the group to hand out partitions. Extra keyword
    arguments go to `KafkaConsumer` (they override the short group timeouts)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id=f"{group_id}-live-seconds",
        auto_offset_reset="earliest",
        enable_auto_commit=False,  # never commit: every run reads the whole history
        **{**GROUP_SETTINGS, **consumer_settings},
    )
    totals = Totals()
    try:
        listener = _FromTheBeginning(consumer)
        consumer.subscribe([topic], listener=listener)
        started = time.monotonic()
        last_message: float | None = None
        while True:
            batches = consumer.poll(timeout_ms=500)
            now = time.monotonic()
            for records in batches.values():
                for record in records:
                    if record.value is None:
                        continue
                    totals.add(json.loads(record.value))
                    last_message = now
            if not listener.assigned:
                if now - started > join_timeout:
                    raise TimeoutError(f"no partitions of {topic} after {join_timeout}s")
                continue
            if last_message is None:
                last_message = now  # the idle clock starts once the partitions are ours
            if now - last_message >= idle_timeout:
                return totals
    finally:
        consumer.close(autocommit=False)


def _table(totals: Totals) -> str:
    rows = totals.rows()
    width = max([len("tenant"), *(len(r["tenant"]) for r in rows)])
    lines = [f"{'tenant':<{width}}  {'day (UTC)':<10}  {'live seconds':>12}"]
    lines += [f"{r['tenant']:<{width}}  {r['day']:<10}  {r['live_seconds']:>12}" for r in rows]
    lines.append(
        f"{totals.messages} messages, {totals.duplicates} duplicates skipped, "
        f"{totals.billed_events} billing events"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("XENTREE_KAFKA_BOOTSTRAP") or "127.0.0.1:9092",
        help="Kafka bootstrap servers (default: $XENTREE_KAFKA_BOOTSTRAP or 127.0.0.1:9092)",
    )
    parser.add_argument(
        "--topic",
        default=os.environ.get("XENTREE_KAFKA_TOPIC") or "xentree.live.events",
        help="topic (default: $XENTREE_KAFKA_TOPIC or xentree.live.events)",
    )
    parser.add_argument("--group", required=True, help="this consumer's own group id")
    parser.add_argument(
        "--idle-timeout", type=float, default=5.0,
        help="stop after this many seconds without a message (default 5)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        totals = live_seconds_per_day(args.bootstrap, args.topic, args.group, args.idle_timeout)
    except TimeoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({
            "rows": totals.rows(),
            "per_tenant": totals.per_tenant(),
            "messages": totals.messages,
            "duplicates": totals.duplicates,
        }, indent=2))
    else:
        print(_table(totals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
