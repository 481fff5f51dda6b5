"""What analysts' Kafka tools say is the end of a topic on the embedded broker, against what is
really there (docs/analysts.md, "End offsets and lag on the embedded broker").

Starts the embedded broker (Tansu, from the `embedded` extra), or uses ``--bootstrap``; creates a
topic of ``--partitions`` partitions; publishes ``--records`` records keyed by 1,000 supporters,
in bursts of ``--batch`` records, each burst flushed at once (kafka-python, as the relay
publishes: the records of a burst for one partition travel as one batch); then compares, per
partition:

- ``listoffsets``: the end ListOffsets(latest) answers, as confluent-kafka's
  ``get_watermark_offsets(tp, cached=False)`` asks it (librdkafka's
  ``rd_kafka_query_watermark_offsets``; kafka-python's ``end_offsets`` is compared too);
- ``fetch_high_watermark``: what confluent-kafka reads from the start until librdkafka reports
  the partition's end (PARTITION_EOF, from the fetch responses' high watermark), and its
  ``get_watermark_offsets(cached=True)`` after that;
- a consumer group that has read and committed everything: its lag by ListOffsets (what
  `kafka-consumer-groups`-style tools compute) and by the fetch high watermark.

With ``--catalogue --bootstrap B`` it publishes nothing and compares every catalogue topic
of a running pipeline instead (after `engage simulate`, say).

Prints the figures as JSON. Needs the `analyst` extra (confluent-kafka).

    .venv/bin/python scripts/end_offsets.py [--records 1470] [--partitions 64] [--batch 200]
    .venv/bin/python scripts/end_offsets.py --catalogue --bootstrap 127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaPythonPartition
from kafka.admin import NewTopic

from infra.topic_reader import end_offsets
from infra.topics import admin_client


@contextlib.contextmanager
def broker(bootstrap: str | None) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    from infra.broker import EmbeddedBroker

    with EmbeddedBroker() as embedded:
        yield embedded.bootstrap


def publish(bootstrap: str, topic: str, records: int, batch: int, seed: int) -> None:
    rng = random.Random(seed)
    supporters = [f"sup_{rng.getrandbits(128):032x}" for _ in range(1000)]
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=1000, batch_size=4 << 20)
    try:
        for start in range(0, records, batch):
            for n in range(start, min(start + batch, records)):
                key = rng.choice(supporters)
                value = {"supporter_id": key, "n": n}
                producer.send(topic, key=key.encode(), value=json.dumps(value).encode())
            producer.flush()
    finally:
        producer.close()


def read_to_eof(bootstrap: str, topic: str, group: str) -> dict[str, Any]:
    """Every record from the start, to librdkafka's end of each partition; then commit."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "session.timeout.ms": 6000,
        }
    )
    assigned: list[int] = []

    def on_assign(c: Any, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            tp.offset = OFFSET_BEGINNING
        c.assign(partitions)
        assigned[:] = [tp.partition for tp in partitions]

    consumer.subscribe([topic], on_assign=on_assign)
    read: dict[int, int] = {}
    eof: dict[int, int] = {}
    deadline = time.monotonic() + 60
    try:
        while not assigned or set(eof) != set(assigned):
            if time.monotonic() > deadline:
                raise TimeoutError("the read stalled")
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    eof[message.partition()] = message.offset()
                    continue
                raise RuntimeError(error)
            deadline = time.monotonic() + 60
            read[message.partition()] = read.get(message.partition(), 0) + 1
            eof.pop(message.partition(), None)
        cached = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)[1]
            for p in assigned
        }
        listed = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in assigned
        }
        if read:  # nothing read, nothing to commit (librdkafka refuses)
            consumer.commit(asynchronous=False)
        committed = {
            tp.partition: max(tp.offset, 0)  # none committed: OFFSET_INVALID
            for tp in consumer.committed([TopicPartition(topic, p) for p in assigned], timeout=10)
        }
    finally:
        consumer.close()
    return {"read": read, "eof": eof, "cached": cached, "listed": listed, "committed": committed}


def kafka_python_end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [KafkaPythonPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return {tp.partition: end for tp, end in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def compare(bootstrap: str, topic: str) -> dict[str, Any]:
    """One topic's ends: ListOffsets against the fetch high watermark, and what was read."""
    replay = read_to_eof(bootstrap, topic, f"analyst-{uuid.uuid4().hex[:8]}")
    fetched = {tp.partition: end for tp, end in end_offsets(bootstrap, [topic])[topic].items()}
    kafka_python = kafka_python_end_offsets(bootstrap, topic)
    read, listed = replay["read"], replay["listed"]
    wrong = [p for p in fetched if listed[p] != fetched[p]]
    return {
        "partitions": len(fetched),
        "records_read_to_fetch_high_watermark": sum(read.values()),
        "fetch_high_watermark_total": sum(fetched.values()),
        "librdkafka_eof_equals_fetch_high_watermark": replay["eof"] == fetched,
        "librdkafka_cached_watermark_equals_fetch_high_watermark": replay["cached"] == fetched,
        "listoffsets_total_confluent_kafka": sum(listed.values()),
        "listoffsets_total_kafka_python": sum(kafka_python.values()),
        "partitions_with_a_wrong_listoffsets_end": len(wrong),
        "records_missed_stopping_at_listoffsets_end": sum(fetched[p] - listed[p] for p in fetched),
        "lag_after_reading_everything_by_listoffsets": sum(
            listed[p] - replay["committed"][p] for p in fetched
        ),
        "lag_after_reading_everything_by_fetch_high_watermark": sum(
            fetched[p] - replay["committed"][p] for p in fetched
        ),
        "example_partition": (
            {"partition": wrong[0], "listoffsets": listed[wrong[0]], "fetched": fetched[wrong[0]]}
            if wrong
            else None
        ),
    }


def measure_published(
    bootstrap: str, records: int, partitions: int, batch: int, seed: int
) -> dict[str, Any]:
    topic = f"analyst.end-offsets.{uuid.uuid4().hex[:8]}"
    admin = admin_client(bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()
    publish(bootstrap, topic, records, batch, seed)
    return {"records_published": records, "burst": batch, **compare(bootstrap, topic)}


def measure_catalogue(bootstrap: str) -> dict[str, Any]:
    """Every catalogue topic of a running pipeline, and their totals."""
    from schemas.catalogue import TOPICS

    topics = {spec.name: compare(bootstrap, spec.name) for spec in TOPICS}
    totals = {
        name: sum(figures[name] for figures in topics.values())
        for name in (
            "partitions",
            "records_read_to_fetch_high_watermark",
            "listoffsets_total_confluent_kafka",
            "partitions_with_a_wrong_listoffsets_end",
            "records_missed_stopping_at_listoffsets_end",
        )
    }
    return {"totals": totals, "topics": topics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1470)
    parser.add_argument("--partitions", type=int, default=64)
    parser.add_argument("--batch", type=int, default=200, help="records a burst, flushed at once")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bootstrap", help="a running Kafka (default: start the embedded one)")
    parser.add_argument(
        "--catalogue",
        action="store_true",
        help="publish nothing: compare every catalogue topic of the running pipeline "
        "(--bootstrap, e.g. after `engage simulate`)",
    )
    args = parser.parse_args()
    if args.catalogue and not args.bootstrap:
        parser.error("--catalogue needs --bootstrap")
    with broker(args.bootstrap) as bootstrap:
        if args.catalogue:
            figures = measure_catalogue(bootstrap)
        else:
            figures = measure_published(
                bootstrap, args.records, args.partitions, args.batch, args.seed
            )
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
