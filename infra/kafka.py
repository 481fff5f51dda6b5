"""Kafka clients configured once for the pipeline: idempotent producers, manual-commit consumers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from kafka import KafkaProducer

from schemas.events import DeadLetter

Record = tuple[str, bytes, bytes]
"""(topic, key, value) of a record to publish."""


def idempotent_producer(bootstrap: str, client_id: str, **overrides: Any) -> Any:
    """The kafka-python producer (its idempotent producer works on Tansu, aiokafka's does
    not): idempotent, acks=all, retried without end, short linger."""
    options: dict[str, Any] = {
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 1,
        "max_in_flight_requests_per_connection": 5,
        "retries": 2**31 - 1,
        "request_timeout_ms": 10_000,
        **overrides,
    }
    return KafkaProducer(bootstrap_servers=bootstrap, client_id=client_id, **options)


def ledger_producer(bootstrap: str) -> Any:
    """The relay's producer: large batches of ledger rows."""
    return idempotent_producer(bootstrap, "engage-relay", batch_size=256 * 1024)


def group_consumer(
    bootstrap: str,
    group_id: str,
    client_id: str,
    settings: ConsumerSettings,
    *topics: str,
) -> AIOKafkaConsumer:
    """The aiokafka consumer of one of the pipeline's groups: manual commits, range assignor."""
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id=client_id,
        **settings.options(),
    )


def output_producer(bootstrap: str, client_id: str, **overrides: Any) -> AIOKafkaProducer:
    """The aiokafka producer a worker publishes its outputs with: acks=all."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, client_id=client_id, acks="all", **overrides
    )


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """aiokafka settings for the pipeline's own consumer groups (see docs/faust-table-stall.md).

    Frozen: a worker is given its settings (tests pass a shorter session timeout) instead of
    anyone changing a shared default.
    """

    max_poll_records: int = 5000
    fetch_max_wait_ms: int = 50
    # Tansu answers a first JoinGroup after half the session timeout: 10 s gives a 5 s join.
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    max_poll_interval_ms: int = 300_000

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``AIOKafkaConsumer``: a fresh dict on every call."""
        return {
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_poll_records": self.max_poll_records,
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "max_poll_interval_ms": self.max_poll_interval_ms,
            # Partition p of every input topic must land in the same worker (the state of a
            # supporter is the fold over all their topics); aiokafka's default is round-robin.
            "partition_assignment_strategy": (RangePartitionAssignor,),
        }


CONSUMER_DEFAULTS = ConsumerSettings()
"""The settings the pipeline's consumer groups run with unless told otherwise."""


def dead_letter(
    consumer: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    error: str,
) -> Record:
    letter = DeadLetter(
        event_time=datetime.now(UTC),
        source_topic=topic,
        partition=partition,
        offset=offset,
        source_key=key.decode(errors="replace") if key else None,
        error=error[:2000],
        payload=(value or b"").decode(errors="replace"),
        consumer=consumer,
    )
    return (DeadLetter.topic, topic.encode(), letter.model_dump_json().encode())
