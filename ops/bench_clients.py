"""Benchmark: the two Kafka clients against the embedded broker, shaped as the relay and the
projector use them: CPU per message of the client and of the broker, no PostgreSQL and none
of our code.

    .venv/bin/python ops/bench_clients.py                  # 3 rounds of 20,000 messages
    .venv/bin/python ops/bench_clients.py --rounds 5 --messages 50000 --batch 50

Produce: batches of `--batch` messages (the relay's rounds under load), each with a key and
the relay's two headers, sent with acks=all and one request in flight, then flushed and
every acknowledgement checked, as the relay does. Consume: the same topic from its start by
assignment, in polls of up to 500 (the projector's batch). Each round runs kafka-python and
then confluent-kafka (librdkafka), each on a topic of its own, so the machine's drift falls
on both alike. Every figure is the process's own CPU time (getrusage) or the broker's (from
/proc) over the phase, divided by the messages.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ops.bench_broker import cpu_seconds  # noqa: E402
from ops.stack import EmbeddedKafka, free_port  # noqa: E402

CLIENTS = ("kafka-python", "confluent-kafka")
HEADERS = [("content-type", b"application/cloudevents+json"),
           ("xentree-previous-position", b"123456")]


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def produce_kafka_python(bootstrap: str, topic: str, keys: list[bytes], value: bytes,
                         messages: int, batch: int) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                             max_in_flight_requests_per_connection=1,
                             enable_idempotence=False)
    for start in range(0, messages, batch):
        futures = [producer.send(topic, key=keys[i % len(keys)], value=value,
                                 headers=HEADERS, partition=0)
                   for i in range(start, min(start + batch, messages))]
        producer.flush()
        for f in futures:
            f.get(timeout=0)
    producer.close()


def produce_confluent(bootstrap: str, topic: str, keys: list[bytes], value: bytes,
                      messages: int, batch: int) -> None:
    from confluent_kafka import KafkaException, Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                         "max.in.flight.requests.per.connection": 1,
                         "enable.idempotence": False})
    failed: list[object] = []
    acked = 0

    def delivered(err: object, _msg: object) -> None:
        nonlocal acked
        if err is None:
            acked += 1
        else:
            failed.append(err)

    for start in range(0, messages, batch):
        for i in range(start, min(start + batch, messages)):
            producer.produce(topic, key=keys[i % len(keys)], value=value, headers=HEADERS,
                             partition=0, on_delivery=delivered)
        producer.flush()
        if failed:
            raise KafkaException(failed[0])
    if acked != messages:
        raise SystemExit(f"confluent-kafka: {acked} of {messages} acknowledged")


def consume_kafka_python(bootstrap: str, topic: str, messages: int) -> None:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             max_poll_records=500)
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    got = 0
    while got < messages:
        for records in consumer.poll(timeout_ms=1000, max_records=500).values():
            got += sum(1 for r in records if r.value)
    consumer.close()


def consume_confluent(bootstrap: str, topic: str, messages: int) -> None:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-clients",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got = 0
    while got < messages:
        for m in consumer.consume(500, 1.0):
            if m.error():
                raise KafkaException(m.error())
            got += 1 if m.value() else 0
    consumer.close()


def measure(broker_pid: int, run: Callable[[], None], messages: int) -> tuple[float, float]:
    """Microseconds of CPU per message: this process's, the broker's."""
    own, broker = own_cpu(), cpu_seconds(broker_pid)
    run()
    return (1e6 * (own_cpu() - own) / messages,
            1e6 * (cpu_seconds(broker_pid) - broker) / messages)


def main() -> int:
    parser = argparse.ArgumentParser(prog="ops/bench_clients.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=20, help="messages per flush")
    parser.add_argument("--value-bytes", type=int, default=600,
                        help="message size (an envelope is 500-700 bytes)")
    args = parser.parse_args()

    keys = [os.urandom(16).hex().encode() for _ in range(256)]
    value = b"x" * args.value_bytes
    producers = {"kafka-python": produce_kafka_python, "confluent-kafka": produce_confluent}
    consumers = {"kafka-python": consume_kafka_python, "confluent-kafka": consume_confluent}
    figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
    broker = EmbeddedKafka(free_port())
    broker.start()
    try:
        pid = broker.pid
        assert pid is not None
        for r in range(args.rounds):
            for client in CLIENTS:
                topic = f"bench-{client}-{r}"
                figures.setdefault((client, "produce"), []).append(measure(
                    pid, lambda c=client, t=topic: producers[c](
                        broker.bootstrap, t, keys, value, args.messages, args.batch),
                    args.messages))
                figures.setdefault((client, "consume"), []).append(measure(
                    pid, lambda c=client, t=topic: consumers[c](
                        broker.bootstrap, t, args.messages), args.messages))
    finally:
        broker.stop()

    print(f"{args.rounds} rounds of {args.messages:,} messages of {args.value_bytes} bytes, "
          f"{args.batch} per flush; CPU us per message, median of the rounds (min-max)")
    print("| client | phase | client CPU | broker CPU |\n|---|---|---:|---:|")
    for (client, phase), runs in figures.items():
        own = [o for o, _ in runs]
        brk = [b for _, b in runs]
        print(f"| {client} | {phase} | {statistics.median(own):.1f} ({min(own):.1f}-"
              f"{max(own):.1f}) | {statistics.median(brk):.1f} ({min(brk):.1f}-"
              f"{max(brk):.1f}) |")
    return 0


if __name__ == "__main__":
    started = time.time()
    code = main()
    print(f"{time.time() - started:.0f} s")
    raise SystemExit(code)
