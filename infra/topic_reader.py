"""Reading topics to their end without a consumer group: end offsets and every record up to them.

Tansu 0.6.0 answers ListOffsets(latest) with the last *batch's* base offset + 1, not the offset
after its last record, so end offsets and lag computed from it are wrong once batches hold
several records (kafka-python's and confluent-kafka's ``end_offsets`` alike). The end of a
partition here is always the high watermark of a fetch response, which is right on Tansu and
on Apache Kafka.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from infra.topics import admin_client

DEADLINE_S = 30.0


def _consumer(bootstrap: str, client_id: str) -> Any:
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )


def _partitions(consumer: Any, topics: Iterable[str]) -> list[TopicPartition]:
    return [
        TopicPartition(topic, p)
        for topic in topics
        for p in sorted(consumer.partitions_for_topic(topic) or ())
    ]


def end_offsets(
    bootstrap: str, topics: Iterable[str], deadline_s: float = DEADLINE_S
) -> dict[str, dict[TopicPartition, int]]:
    """The high watermark of every partition of ``topics`` (a topic the broker does not have
    maps to no partitions): fetched from just before the listed end, which is at or before
    the true one."""
    topics = list(topics)
    consumer = _consumer(bootstrap, "engage-offsets")
    try:
        tps = _partitions(consumer, topics)
        listed = consumer.end_offsets(tps) if tps else {}
        ends: dict[str, dict[TopicPartition, int]] = {topic: {} for topic in topics}
        for tp in tps:
            ends[tp.topic][tp] = listed[tp]
        pending = {tp for tp in tps if listed[tp] > 0}
        consumer.assign(tps)
        for tp in pending:
            consumer.seek(tp, listed[tp] - 1)
        deadline = time.monotonic() + deadline_s
        while pending and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200, max_records=1_000_000)
            for tp in list(pending):
                high = consumer.highwater(tp)
                if high is not None:
                    ends[tp.topic][tp] = high
                    pending.discard(tp)
        if pending:
            raise TimeoutError(
                f"no high watermark for {sorted(map(str, pending))} in {deadline_s} s"
            )
        return ends
    finally:
        consumer.close()


@dataclass(frozen=True)
class GroupLag:
    """A consumer group's lag over its topics (records between its committed offsets and the
    high watermarks), and the sum of its committed offsets: whether it moves."""

    lag: int
    committed: int


def group_lags(
    bootstrap: str,
    groups: Mapping[str, Iterable[str]],
    ends: Mapping[str, Mapping[TopicPartition, int]] | None = None,
) -> dict[str, GroupLag]:
    """Each group's lag over the topics it reads, against the high watermarks (``ends``, as
    ``end_offsets`` gives them; read here when not given). A partition the group never
    committed counts from 0."""
    topics = {topic for names in groups.values() for topic in names}
    ends = ends if ends is not None else end_offsets(bootstrap, sorted(topics))
    admin = admin_client(bootstrap)
    try:
        lags: dict[str, GroupLag] = {}
        for group, names in groups.items():
            committed = admin.list_group_offsets(group).get(group, {})
            offsets = {tp: committed[tp].offset for tp in committed if committed[tp].offset > 0}
            lag = sum(
                max(end - offsets.get(tp, 0), 0)
                for topic in names
                for tp, end in ends.get(topic, {}).items()
            )
            lags[group] = GroupLag(lag, sum(offsets.values()))
        return lags
    finally:
        admin.close()


def read_to_end(
    bootstrap: str,
    topics: Iterable[str],
    *,
    partition_filter: Callable[[int], bool] | None = None,
    deadline_s: float = DEADLINE_S,
    client_id: str = "engage-reader",
) -> Iterator[Any]:
    """Every record of ``topics`` (kafka-python ``ConsumerRecord``s) from the start up to each
    partition's high watermark, partition by partition in offset order; a topic the broker does
    not have raises LookupError. ``partition_filter`` keeps only the partition numbers it
    accepts. Records arriving meanwhile may be included; the read ends once every partition's
    position has reached the high watermark its last fetch reported."""
    topics = list(topics)
    consumer = _consumer(bootstrap, client_id)
    try:
        for topic in topics:
            if not consumer.partitions_for_topic(topic):
                raise LookupError(f"no topic {topic!r} on {bootstrap} (engage topics create)")
        tps = [
            tp
            for tp in _partitions(consumer, topics)
            if partition_filter is None or partition_filter(tp.partition)
        ]
        if not tps:
            return
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        remaining = set(tps)
        deadline = time.monotonic() + deadline_s
        while remaining:
            for batch in consumer.poll(timeout_ms=100, max_records=10_000).values():
                yield from batch
                deadline = time.monotonic() + deadline_s  # progress: the deadline is for stalls
            for tp in list(remaining):
                mark = consumer.highwater(tp)
                if mark is not None and consumer.position(tp) >= mark:
                    remaining.discard(tp)
                    consumer.pause(tp)
            if remaining and time.monotonic() > deadline:
                stuck = sorted(map(str, remaining))
                raise TimeoutError(f"could not read {stuck} to their end in {deadline_s} s")
    finally:
        consumer.close()


def record_checks(
    bootstrap: str,
    offsets: Mapping[tuple[str, int], int],
    deadline_s: float = 10.0,
    client_id: str = "engage-checks",
) -> dict[tuple[str, int], str | None]:
    """A check of the record at each (topic, partition) offset: its timestamp and the CRC-32 of
    its key and value (``"<ms>:<crc>"``), or None when the partition has no record there (past
    its end, or deleted by retention). Two logs with the same check at an offset hold the same
    event there."""
    checks: dict[tuple[str, int], str | None] = {}
    if not offsets:
        return checks
    consumer = _consumer(bootstrap, client_id)
    try:
        tps = {TopicPartition(t, p): o for (t, p), o in offsets.items()}
        consumer.assign(list(tps))
        for tp, offset in tps.items():
            consumer.seek(tp, offset)
        pending = set(tps)
        deadline = time.monotonic() + deadline_s
        while pending and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=100, max_records=1000).items():
                if tp in pending and records:
                    first = records[0]
                    key = (tp.topic, tp.partition)
                    checks[key] = (
                        _check(first.timestamp, first.key, first.value)
                        if first.offset == tps[tp]
                        else None
                    )
                    pending.discard(tp)
                    consumer.pause(tp)
            for tp in list(pending):
                mark = consumer.highwater(tp)
                if mark is not None and consumer.position(tp) >= mark:
                    checks[(tp.topic, tp.partition)] = None  # nothing there
                    pending.discard(tp)
        if pending:
            raise TimeoutError(f"no record at {sorted(map(str, pending))} in {deadline_s} s")
        return checks
    finally:
        consumer.close()


def _check(timestamp: int, key: bytes | None, value: bytes | None) -> str:
    return f"{timestamp}:{zlib.crc32(value or b'', zlib.crc32(key or b'')):08x}"
