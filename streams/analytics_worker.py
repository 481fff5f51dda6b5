"""The analytics stream: mirrors the input topics and the stream's and sender's outputs onto
the ``analytics.*`` topics for analysts (``streams/analytics.py`` says how, purely).

A consumer-group worker (aiokafka, group ``engage-analytics``): each fetched batch is mapped,
its analytics records sent (keyed by the person's pseudonym), and its offsets committed only
once every record sent is acknowledged. At least once: a crash between the two re-sends a few
records with the same ``event_id``, on which the sinks are idempotent.

Only bad input is dead-lettered (a record that does not validate against its topic's model),
with a warning naming its topic, partition and offset; anything else is a bug that stops the
worker (the supervisor restarts it).

An erased supporter's later records are dropped: the worker reads ``supporter.erased`` to its
end when it starts, and adds each erasure it consumes. Metrics ``engage_analytics_*`` are
updated here; ``AnalyticsWorker.liveness`` backs the process's /healthz.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError

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
from schemas.catalogue import INPUT_TOPICS
from schemas.events import (
    EngagementScored,
    MessageStatus,
    NudgeRequested,
    SupporterErased,
    TaskCreated,
)
from streams.analytics import AnalyticsKey, analytics_record

log = structlog.get_logger(__name__)
GROUP = "engage-analytics"
"""The analytics workers' consumer group."""
SUBSCRIBED: tuple[str, ...] = (
    *INPUT_TOPICS,
    EngagementScored.topic,
    NudgeRequested.topic,
    TaskCreated.topic,
    MessageStatus.topic,
)

RECORDS_IN = Counter("engage_analytics_records_in", "Records fetched.", ["topic"])
RECORDS_OUT = Counter(
    "engage_analytics_records_out", "Records published: analytics.* and dead letters.", ["topic"]
)
DEAD_LETTERS = Counter(
    "engage_analytics_dead_letters", "Records dead-lettered, by source topic.", ["topic"]
)
BATCH_SECONDS = Histogram(
    "engage_analytics_batch_seconds",
    "Time to map a fetched batch, publish its records and commit once they are acked.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
LAG = Gauge(
    "engage_analytics_lag_records",
    "Records of an assigned partition not yet read: the fetch high watermark less the position.",
    ["topic", "partition"],
)


class AnalyticsWorker:
    def __init__(
        self,
        bootstrap: str,
        key: AnalyticsKey,
        group_id: str = GROUP,
        consumer_settings: ConsumerSettings = CONSUMER_DEFAULTS,
        health_stale_s: float = 60.0,
    ) -> None:
        """``key``: the analytics key and its id. ``health_stale_s``: the patience of the
        health rule (``infra.metrics.Liveness``)."""
        self.bootstrap = bootstrap
        self.key = key
        self.group_id = group_id
        self.consumer_settings = consumer_settings
        self.erased: set[str] = set()
        self.published = 0
        self.liveness = Liveness("analytics", health_stale_s)
        self._lag = ConsumerLag(PartitionGauges(LAG), self.liveness)

    async def run(self, stop: asyncio.Event) -> None:
        self.erased = await asyncio.to_thread(erased_ids, self.bootstrap)
        self.consumer = group_consumer(
            self.bootstrap, self.group_id, "engage-analytics", self.consumer_settings, *SUBSCRIBED
        )
        self.producer = output_producer(self.bootstrap, "engage-analytics", linger_ms=5)
        await self.producer.start()
        await self.consumer.start()
        watch = GroupLagWatch(self._group_lag, self.liveness).start()
        try:
            while not stop.is_set():
                batches = await self.consumer.getmany(timeout_ms=100, max_records=5000)
                if batches:
                    with BATCH_SECONDS.time():
                        await self._mirror(batches)
                    self.liveness.batch()
                await self._lag.observe(self.consumer)
        finally:
            watch.stop()
            await self.consumer.stop()
            await self.producer.stop()

    async def _mirror(self, batches: dict[TopicPartition, list[Any]]) -> None:
        outputs: list[Record] = []
        letters = 0
        for tp, messages in batches.items():
            RECORDS_IN.labels(tp.topic).inc(len(messages))
            for m in messages:
                try:
                    record = analytics_record(tp.topic, m.value, self.key, self.erased)
                except ValidationError as exc:
                    with record_context(tp.topic, tp.partition, m.offset):
                        log.warning("analytics.dead_letter", reason=input_error(exc))
                    DEAD_LETTERS.labels(tp.topic).inc()
                    letters += 1
                    outputs.append(
                        dead_letter(
                            "analytics", tp.topic, tp.partition, m.offset, m.key, m.value, str(exc)
                        )
                    )
                    continue
                if tp.topic == SupporterErased.topic and m.key:
                    self.erased.add(m.key.decode())
                if record is not None:
                    value = record.model_dump_json().encode()
                    outputs.append((record.topic, record.key().encode(), value))
        futures = [
            await self.producer.send(topic, value=value, key=key) for topic, key, value in outputs
        ]
        await asyncio.gather(*futures)  # every record acknowledged before the commit
        for topic, _, _ in outputs:
            RECORDS_OUT.labels(topic).inc()
        self.published += len(outputs)
        try:
            await self.consumer.commit({tp: m[-1].offset + 1 for tp, m in batches.items()})
        except (CommitFailedError, IllegalStateError) as exc:  # re-read by the next owner
            log.warning("analytics.commit_failed", error=str(exc))
        log.info(
            "analytics.batch",
            records=sum(len(m) for m in batches.values()),
            published=len(outputs) - letters,
            dead_letters=letters,
        )

    def _group_lag(self) -> tuple[int, int]:
        lag = group_lags(self.bootstrap, {self.group_id: SUBSCRIBED})[self.group_id]
        return lag.lag, lag.committed


def erased_ids(bootstrap: str) -> set[str]:
    """Every supporter id ``supporter.erased`` holds (its record keys), read to its end."""
    return {
        record.key.decode()
        for record in read_to_end(bootstrap, [SupporterErased.topic], client_id="engage-analytics")
        if record.key
    }
