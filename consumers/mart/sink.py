"""The mart's sink worker (consumer group ``engage-mart``) and its rebuild from the topics.

The worker stores what it fetched in a quarter second (``write_every_s``) in one transaction,
then commits the offsets: a crash re-reads, and the keys dedupe; records held when it stops
are not committed, and are read again. A record that does not validate is dead-lettered with
the reason (and a warning naming its topic, partition and offset); anything else stops the
worker loudly, and the supervisor of `engage up` restarts it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from consumers.mart.store import MartBatch, empty_mart, store_batch
from infra.kafka import (
    CONSUMER_DEFAULTS,
    ConsumerSettings,
    Record,
    dead_letter,
    group_consumer,
    output_producer,
)
from infra.logging import input_error, record_context
from infra.metrics import ConsumerLag, GroupLagWatch, Liveness, PartitionGauges
from infra.topic_reader import group_lags, read_to_end
from schemas.events import ANALYTICS_EVENT_TYPES, AnalyticsRecord

log = structlog.get_logger(__name__)
MODELS: Mapping[str, type[AnalyticsRecord]] = ANALYTICS_EVENT_TYPES
TOPICS = tuple(MODELS)
GROUP = "engage-mart"
"""The mart's consumer group, subscribed to ``TOPICS``."""
CONSUMER = "mart"
"""The ``consumer`` named on the mart's dead letters."""
REBUILD_CHUNK = 5000
"""Records stored per statement batch during a rebuild."""

RECORDS_IN = Counter("engage_mart_records_in", "Records fetched by the mart's sink.", ["topic"])
STORED = Counter(
    "engage_mart_stored", "Mart rows inserted or changed (a repeat is not counted).", ["table"]
)
DEAD_LETTERS = Counter(
    "engage_mart_dead_letters", "Records the mart dead-lettered, by topic.", ["topic"]
)
BATCH_SECONDS = Histogram(
    "engage_mart_batch_seconds",
    "Time to store a fetched batch in the mart, publish its dead letters and commit.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
LAG = Gauge(
    "engage_mart_lag_records",
    "Records of an assigned partition not yet in the mart: the fetch high watermark the "
    "consumer saw, less its position.",
    ["topic", "partition"],
)


@dataclass
class Parsed:
    """A poll's records: the batch to store and why the others were refused."""

    batch: MartBatch = field(default_factory=MartBatch)
    refused: list[tuple[str, int, int, bytes | None, bytes | None, str]] = field(
        default_factory=list
    )
    """(topic, partition, offset, key, value, error) of each record that did not validate."""


def parse(
    records: Iterable[tuple[str, int, int, bytes | None, bytes | None]],
    models: Mapping[str, type[AnalyticsRecord]] = MODELS,
) -> Parsed:
    """Validate each (topic, partition, offset, key, value) against its topic's model."""
    parsed = Parsed()
    for topic, partition, offset, key, value in records:
        try:
            if value is None:
                raise ValueError("no value (a tombstone): the analytics topics carry none")
            if b"\\u0000" in value:  # valid JSON and a valid str, but PostgreSQL refuses it
                raise ValueError("a text field holds a NUL character, which SQL cannot store")
            parsed.batch.add(models[topic].model_validate_json(value))
        except (ValidationError, ValueError) as exc:
            with record_context(topic, partition, offset):
                log.warning("mart.dead_letter", reason=input_error(exc))
            parsed.refused.append((topic, partition, offset, key, value, str(exc)))
    return parsed


class MartWorker:
    """Keeps the mart from the analytics topics (``models``: each topic's model; tests give
    topics of their own), in consumer group ``group_id``."""

    def __init__(
        self,
        bootstrap: str,
        sessions: sessionmaker[Session],
        group_id: str = GROUP,
        consumer_settings: ConsumerSettings = CONSUMER_DEFAULTS,
        health_stale_s: float = 60.0,
        models: Mapping[str, type[AnalyticsRecord]] = MODELS,
        write_every_s: float = 0.25,
    ) -> None:
        """``write_every_s``: how long records wait to be stored together, from the first
        fetched (analysts read the mart by the day, not by the millisecond). On SQLite every
        write transaction holds the database's one write lock, which the nudges' path waits
        for: fewer, larger transactions hold it for less time in all."""
        self.models = models
        self.write_every_s = write_every_s
        self.bootstrap = bootstrap
        self.sessions = sessions
        self.group_id = group_id
        self.consumer_settings = consumer_settings
        self.liveness = Liveness("mart", health_stale_s)
        self._lag = ConsumerLag(PartitionGauges(LAG), self.liveness)

    async def run(self, stop: asyncio.Event) -> None:
        consumer = group_consumer(
            self.bootstrap, self.group_id, "engage-mart", self.consumer_settings, *self.models
        )
        producer = output_producer(self.bootstrap, "engage-mart")
        await producer.start()
        await consumer.start()
        watch = GroupLagWatch(self._group_lag, self.liveness).start()
        loop = asyncio.get_running_loop()
        held: dict[TopicPartition, list[Any]] = {}
        count, first_at = 0, 0.0
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=100, max_records=5000)
                for tp, messages in batches.items():
                    if not count:
                        first_at = loop.time()
                    held.setdefault(tp, []).extend(messages)
                    count += len(messages)
                if count and (count >= 5000 or loop.time() - first_at >= self.write_every_s):
                    with BATCH_SECONDS.time():
                        await self._store(consumer, producer, held)
                    held, count = {}, 0
                    self.liveness.batch()
                await self._lag.observe(consumer)
        finally:
            watch.stop()
            await consumer.stop()
            await producer.stop()

    async def _store(
        self, consumer: Any, producer: Any, batches: dict[TopicPartition, list[Any]]
    ) -> None:
        for tp, messages in batches.items():
            RECORDS_IN.labels(tp.topic).inc(len(messages))
        parsed = parse(
            (
                (tp.topic, tp.partition, m.offset, m.key, m.value)
                for tp, messages in batches.items()
                for m in messages
            ),
            self.models,
        )
        written = await asyncio.to_thread(self._write, parsed.batch)
        for table, count in written.items():
            STORED.labels(table).inc(count)
        for topic, partition, offset, key, value, error in parsed.refused:
            letter: Record = dead_letter(CONSUMER, topic, partition, offset, key, value, error)
            await producer.send_and_wait(letter[0], value=letter[2], key=letter[1])
            DEAD_LETTERS.labels(topic).inc()
        try:
            await consumer.commit({tp: m[-1].offset + 1 for tp, m in batches.items()})
        except CommitFailedError as exc:  # redelivered to the next owner; the keys dedupe
            log.warning("mart.commit_failed", error=str(exc))
        log.info(
            "mart.stored",
            records=len(parsed.batch),
            dead_letters=len(parsed.refused),
            **written,
        )

    def _write(self, batch: MartBatch) -> dict[str, int]:
        with self.sessions.begin() as session:
            return store_batch(session, batch)

    def _group_lag(self) -> tuple[int, int]:
        lag = group_lags(self.bootstrap, {self.group_id: tuple(self.models)})[self.group_id]
        return lag.lag, lag.committed


@dataclass(frozen=True)
class Rebuilt:
    """What a rebuild read and kept."""

    records: int
    refused: int
    rows: dict[str, int]
    seconds: float


def rebuild(
    bootstrap: str,
    sessions: sessionmaker[Session],
    models: Mapping[str, type[AnalyticsRecord]] = MODELS,
) -> Rebuilt:
    """Empty the mart and store every analytics record from the start of each topic to its
    fetch high watermark, in one transaction: readers see the old mart until the new one is
    complete. Records that do not validate are counted, not dead-lettered again (the sink did
    that when they arrived)."""
    started = time.monotonic()
    rows: dict[str, int] = {}
    records = refused = 0
    with sessions.begin() as session:
        empty_mart(session)
        chunk: list[tuple[str, int, int, bytes | None, bytes | None]] = []

        def flush() -> None:
            nonlocal records, refused
            parsed = parse(chunk, models)
            for table, count in store_batch(session, parsed.batch).items():
                rows[table] = rows.get(table, 0) + count
            records += len(chunk)
            refused += len(parsed.refused)
            chunk.clear()

        for r in read_to_end(bootstrap, list(models), client_id="engage-mart-rebuild"):
            chunk.append((r.topic, r.partition, r.offset, r.key, r.value))
            if len(chunk) >= REBUILD_CHUNK:
                flush()
        flush()
    return Rebuilt(records, refused, rows, time.monotonic() - started)
