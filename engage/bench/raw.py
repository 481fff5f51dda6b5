"""Raw aiokafka throughput (produce and getmany consume) and benchmark topic provisioning."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from infra.topics import admin_client

Record = tuple[bytes, bytes]


def bench_topic_name(prefix: str = "bench") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def create_topic(bootstrap: str, name: str, partitions: int) -> str:
    """Create one topic (the broker never auto-creates) and wait until its metadata is visible."""
    admin = admin_client(bootstrap)
    try:
        admin.create_topics(
            {name: {"num_partitions": partitions, "replication_factor": 1}},
            wait_for_metadata=True,
        )
    finally:
        admin.close()
    return name


def partition_count(bootstrap: str, topic: str) -> int:
    admin = admin_client(bootstrap)
    try:
        described: list[dict[str, Any]] = admin.describe_topics([topic])
    finally:
        admin.close()
    for entry in described:
        if entry["name"] == topic and entry["partitions"]:
            return len(entry["partitions"])
    raise LookupError(f"topic {topic!r} not found on {bootstrap}")


async def produce(
    bootstrap: str, topic: str, records: Sequence[Record], linger_ms: int = 5
) -> float:
    """Send every record (acks=all); return the seconds from the first send to the last ack."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=linger_ms,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    try:
        start = time.perf_counter()
        futures = [await producer.send(topic, value=value, key=key) for key, value in records]
        await asyncio.gather(*futures)
        return time.perf_counter() - start
    finally:
        await producer.stop()


async def raw_produce(
    bootstrap: str, topic: str, records: Sequence[Record], linger_ms: int = 5
) -> float:
    """Events/s of one aiokafka producer, acks=all, send() futures gathered."""
    elapsed = await produce(bootstrap, topic, records, linger_ms)
    return len(records) / elapsed


async def raw_consume(bootstrap: str, topic: str, count: int, timeout_s: float = 120.0) -> float:
    """Events/s of getmany() from the earliest offset (assigned, no group) until count are read.

    The clock starts at the first getmany() after assignment, so no group join is counted.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise LookupError(f"topic {topic!r} not found on {bootstrap}")
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        seen = 0
        start = time.perf_counter()
        deadline = start + timeout_s
        while seen < count:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"raw_consume read {seen}/{count} events in {timeout_s}s")
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            seen += sum(len(batch) for batch in batches.values())
        return seen / (time.perf_counter() - start)
    finally:
        await consumer.stop()
