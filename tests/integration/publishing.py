"""Publishing test records in bursts, so that the broker holds batches of several records (what
the relay does, and what makes ListOffsets(latest) wrong on the embedded broker)."""

from __future__ import annotations

from collections.abc import Sequence

from kafka import KafkaConsumer, KafkaProducer, TopicPartition


def publish_in_bursts(
    bootstrap: str,
    topic: str,
    records: Sequence[tuple[int, bytes, bytes]],
    burst: int = 10,
) -> None:
    """``records`` as (partition, key, value), ``burst`` at a time, each burst flushed at once:
    one batch a partition a burst."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=1000, batch_size=1 << 20)
    try:
        for start in range(0, len(records), burst):
            for partition, key, value in records[start : start + burst]:
                producer.send(topic, key=key, value=value, partition=partition)
            producer.flush()
    finally:
        producer.close()


def listed_end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """What ListOffsets(latest) answers for each partition (kafka-python's ``end_offsets``)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        return {tp.partition: end for tp, end in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()
