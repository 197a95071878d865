"""Benchmark: the embedded broker alone (Tansu, memory storage) with kafka-python, no
PostgreSQL and none of our code: how produce-to-consume latency and the broker's CPU move
as the topic grows, and what the consumer's fetch wait does to the tail.

    .venv/bin/python ops/bench_broker.py                        # 500 msg/s for 60 s
    .venv/bin/python ops/bench_broker.py --rate 500 --seconds 40 --fetch-wait-ms 500
    .venv/bin/python ops/bench_broker.py --no-consumer           # produce only

The producer is configured as the relay's (acks=all, linger 5 ms, one request in flight,
a flush every 10 ms of messages) with 256 keys over the topic's partitions; the consumer as
the projector's (a group, fetch_min_bytes=1, the given fetch wait, a 10 ms pause between
polls). Each message carries its send time; a consumer thread records when it got it.
Every window prints the broker's CPU (from /proc) and the latency p50/p99/max of the
messages sent in it.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kafka import KafkaConsumer, KafkaProducer  # noqa: E402
from kafka.admin import KafkaAdminClient, NewTopic  # noqa: E402

from ops.benchmark.httpload import LoadResult  # noqa: E402
from ops.stack import EmbeddedKafka, free_port  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(prog="ops/bench_broker.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500.0, help="messages per second")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--fetch-wait-ms", type=int, default=50,
                        help="the consumer's fetch_max_wait_ms (the projector's is 50)")
    parser.add_argument("--window", type=int, default=5, help="seconds per printed line")
    parser.add_argument("--no-consumer", action="store_true", help="produce only")
    args = parser.parse_args()

    broker = EmbeddedKafka(free_port())
    broker.start()
    try:
        pid = broker.pid
        assert pid is not None
        KafkaAdminClient(bootstrap_servers=broker.bootstrap).create_topics(
            [NewTopic("bench", num_partitions=args.partitions, replication_factor=1)]
        )
        producer = KafkaProducer(
            bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5,
            max_in_flight_requests_per_connection=1, enable_idempotence=False,
        )
        received: list[tuple[float, float]] = []
        stop = threading.Event()
        consumer_thread: threading.Thread | None = None
        if not args.no_consumer:
            consumer = KafkaConsumer(
                bootstrap_servers=broker.bootstrap, group_id="bench",
                fetch_max_wait_ms=args.fetch_wait_ms, fetch_min_bytes=1,
                session_timeout_ms=6000, heartbeat_interval_ms=1000,
                max_poll_interval_ms=10000, auto_offset_reset="earliest",
                enable_auto_commit=False,
            )
            consumer.subscribe(["bench"])
            while not consumer.assignment():
                consumer.poll(100)

            def consume() -> None:
                while not stop.is_set():
                    for records in consumer.poll(timeout_ms=100, max_records=500).values():
                        now = time.time()
                        received.extend(
                            (struct.unpack("d", r.value[:8])[0], now) for r in records
                        )
                    time.sleep(0.01)

            consumer_thread = threading.Thread(target=consume, daemon=True)
            consumer_thread.start()

        print(f"Tansu memory storage, {args.partitions} partitions, {args.rate:.0f} msg/s, "
              f"fetch wait {args.fetch_wait_ms} ms"
              f"{', produce only' if args.no_consumer else ''}")
        print(f"{'window':>8} {'got':>7} {'broker CPU':>11} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'max ms':>8}")
        per_flush = max(1, round(args.rate / 100))
        started = time.time()
        window_start, cpu_start, n = started, cpu_seconds(pid), 0
        windows: list[tuple[float, float, float]] = []
        while time.time() - started < args.seconds:
            delay = started + n / args.rate - time.time()
            if delay > 0:
                time.sleep(delay)
            producer.send("bench", key=str(n % 256).encode(),
                          value=struct.pack("d", time.time()) + b"x" * 400)
            n += 1
            if n % per_flush == 0:
                producer.flush()
            if time.time() - window_start >= args.window:
                now, cpu = time.time(), cpu_seconds(pid)
                windows.append((window_start, now, (cpu - cpu_start) / (now - window_start)))
                window_start, cpu_start = now, cpu
        producer.flush()
        time.sleep(1.0)
        stop.set()
        if consumer_thread is not None:
            consumer_thread.join(5)
        for begin, end, cpu in windows:
            res = LoadResult(seconds=end - begin, latencies=[
                got - sent_at for sent_at, got in received if begin <= sent_at < end
            ])
            print(f"{begin - started:>7.0f}s {res.count:>7} {cpu:>11.2f} "
                  f"{res.percentile_ms(50) or 0:>8.1f} {res.percentile_ms(99) or 0:>8.1f} "
                  f"{1000 * max(res.latencies, default=0.0):>8.1f}")
        if received:
            res = LoadResult(seconds=time.time() - started,
                             latencies=[got - sent_at for sent_at, got in received])
            print(f"all: {res.count} received of {n}; p50 {res.percentile_ms(50):.1f} ms, "
                  f"p99 {res.percentile_ms(99):.1f} ms, "
                  f"max {1000 * max(res.latencies):.1f} ms")
        return 0
    finally:
        broker.stop()


if __name__ == "__main__":
    raise SystemExit(main())
