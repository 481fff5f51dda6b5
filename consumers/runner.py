"""The consumer process: stores nudge and task requests idempotently, then dispatches nudges;
keeps the newest engagement score per supporter (a read model).

Only bad input is dead-lettered (a record that does not validate, or a score the table cannot
hold), each with a warning naming its topic, partition and offset. Anything else is a bug or an
outage: it stops the worker, and the supervisor restarts it; the sender's loop alone rides out
a database that is briefly unavailable.

Metrics (``engage_consumers_*``, ``engage_nudges``, ``engage_sender_*``: consumers/metrics.py)
are updated here and in the dispatcher; ``ConsumerWorker.liveness`` backs the process's /healthz.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError
from pydantic import ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from consumers import metrics
from consumers.dispatch import Dispatcher
from consumers.repository import store_nudges, store_scores, store_tasks, unstorable_score
from infra.kafka import (
    CONSUMER_DEFAULTS,
    ConsumerSettings,
    Record,
    dead_letter,
    group_consumer,
    output_producer,
)
from infra.logging import input_error, record_context
from infra.membership import member_client_id
from infra.metrics import ConsumerLag, GroupLagWatch, Liveness, PartitionGauges
from infra.topic_reader import group_lags
from schemas.events import EngagementScored, Event, NudgeRequested, TaskCreated

log = structlog.get_logger(__name__)
MODELS: Mapping[str, type[Event]] = {
    m.topic: m for m in (NudgeRequested, TaskCreated, EngagementScored)
}
TOPICS = tuple(MODELS)
GROUP = "engage-consumers"
"""The sinks' consumer group, subscribed to ``TOPICS``."""
DATABASE_HICCUPS = (OperationalError, InterfaceError, PoolTimeoutError)
"""A lost connection, a locked SQLite file, a serialisation failure, an exhausted pool."""


@dataclass
class Batch:
    """One poll's records, parsed: what to store, and the dead letters for the rest."""

    nudges: list[NudgeRequested] = field(default_factory=list)
    tasks: list[TaskCreated] = field(default_factory=list)
    scores: list[EngagementScored] = field(default_factory=list)
    letters: list[Record] = field(default_factory=list)


def parse_batch(batches: dict[TopicPartition, list[Any]]) -> Batch:
    """Validate each record against its topic's model; an invalid or unstorable one becomes a
    dead letter naming its topic, partition, offset and error."""
    batch = Batch()
    for tp, messages in batches.items():
        model = MODELS[tp.topic]  # the worker subscribes to these topics only
        for m in messages:
            try:
                event = model.model_validate_json(m.value)
            except ValidationError as exc:
                batch.letters.append(_refuse(tp, m, str(exc), input_error(exc), "ValidationError"))
                continue
            if isinstance(event, NudgeRequested):
                batch.nudges.append(event)
            elif isinstance(event, TaskCreated):
                batch.tasks.append(event)
            elif isinstance(event, EngagementScored):
                problem = unstorable_score(event)
                if problem is None:
                    batch.scores.append(event)
                else:
                    batch.letters.append(_refuse(tp, m, problem, problem, "unstorable", event))
    return batch


def _refuse(
    tp: TopicPartition,
    m: Any,
    error: str,
    reason: str,
    kind: str,
    event: Event | None = None,
) -> Record:
    """A dead letter carrying ``error``, and a warning giving ``reason`` (which quotes no
    input) with the record's topic, partition and offset; counted by ``kind``."""
    event_id, sid = (event.event_id, event.key()) if event is not None else (None, None)
    with record_context(tp.topic, tp.partition, m.offset, event_id, sid):
        log.warning("consumers.dead_letter", reason=reason)
    metrics.DEAD_LETTERS.labels(tp.topic, kind).inc()
    return dead_letter("consumers", tp.topic, tp.partition, m.offset, m.key, m.value, error)


class ConsumerWorker:
    """Offsets are committed after the rows are: a crash re-reads, and the keys dedupe (a
    re-read score rewrites the values it wrote before, or loses to a newer one)."""

    def __init__(
        self,
        bootstrap: str,
        sessions: sessionmaker[Session],
        dispatcher: Dispatcher,
        group_id: str = GROUP,
        consumer_settings: ConsumerSettings = CONSUMER_DEFAULTS,
        health_stale_s: float = 60.0,
    ) -> None:
        """``health_stale_s``: the patience of the health rule (``infra.metrics.Liveness``)."""
        self.sessions = sessions
        self.dispatcher = dispatcher
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.consumer_settings = consumer_settings
        self.liveness = Liveness("consume", health_stale_s)
        self._lag = ConsumerLag(PartitionGauges(metrics.LAG), self.liveness)

    async def run(self, stop: asyncio.Event) -> None:
        self.consumer = group_consumer(  # the pid in the client id: see infra.membership
            self.bootstrap,
            self.group_id,
            member_client_id("engage-consumers"),
            self.consumer_settings,
            *TOPICS,
        )
        self.producer = output_producer(self.bootstrap, "engage-consumers")
        await self.producer.start()
        await self.consumer.start()
        watch = GroupLagWatch(self._group_lag, self.liveness).start()
        dispatching = asyncio.create_task(self._dispatch_until(stop))
        counting = asyncio.create_task(count_nudges_until(self.sessions, stop))
        try:
            while not stop.is_set():
                for task in (dispatching, counting):
                    if task.done():
                        task.result()  # the sender or the count stopped: raise what stopped it
                batches = await self.consumer.getmany(timeout_ms=100, max_records=2000)
                if batches:
                    with metrics.BATCH_SECONDS.time():
                        await self._store(batches)
                    self.liveness.batch()
                await self._lag.observe(self.consumer)
        finally:
            stop.set()
            watch.stop()
            try:
                await dispatching
            finally:
                try:
                    await counting
                finally:
                    await self.consumer.stop()
                    await self.producer.stop()

    def _group_lag(self) -> tuple[int, int]:
        """The group's lag and committed offsets (read while this member has no partitions)."""
        lag = group_lags(self.bootstrap, {self.group_id: TOPICS})[self.group_id]
        return lag.lag, lag.committed

    async def _dispatch_until(self, stop: asyncio.Event) -> None:
        await send_until(self.dispatcher, stop)

    async def _store(self, batches: dict[TopicPartition, list[Any]]) -> None:
        for tp, messages in batches.items():
            metrics.RECORDS_IN.labels(tp.topic).inc(len(messages))
        batch = parse_batch(batches)
        with self.sessions.begin() as session:
            stored_nudges = store_nudges(session, batch.nudges)
            stored_tasks = store_tasks(session, batch.tasks)
            stored_scores = store_scores(session, batch.scores)
        metrics.STORED.labels("nudges").inc(stored_nudges)
        metrics.STORED.labels("tasks").inc(stored_tasks)
        metrics.STORED.labels("supporter_scores").inc(stored_scores)
        for topic, key, value in batch.letters:
            await self.producer.send_and_wait(topic, value=value, key=key)
            metrics.RECORDS_OUT.labels(topic).inc()
        try:
            await self.consumer.commit({tp: m[-1].offset + 1 for tp, m in batches.items()})
        except CommitFailedError as exc:  # redelivered to the next owner; the keys dedupe
            log.warning("consumers.commit_failed", error=str(exc))
        log.info(
            "consumers.stored",
            nudges=stored_nudges,
            tasks=stored_tasks,
            repeats=len(batch.nudges) + len(batch.tasks) - stored_nudges - stored_tasks,
            scores=stored_scores,
            superseded_scores=len(batch.scores) - stored_scores,
            dead_letters=len(batch.letters),
        )


async def count_nudges_until(
    sessions: sessionmaker[Session], stop: asyncio.Event, every_s: float = metrics.NUDGES_EVERY_S
) -> None:
    """Read the nudges' statuses into ``engage_nudges`` every ``every_s`` seconds until
    ``stop``; a database hiccup is logged and tried again at the next turn."""
    while not stop.is_set():
        try:
            await asyncio.to_thread(metrics.refresh_nudges, sessions)
        except DATABASE_HICCUPS:
            log.warning("consumers.nudge_count_failed", exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


async def send_until(dispatcher: Dispatcher, stop: asyncio.Event, batch: int = 100) -> None:
    """Send what is due in short transactions until ``stop``; reconcile stale claims and
    ambiguous sends every few seconds. A database hiccup is logged and tried again; any other
    error stops the sender (a claim it leaves behind is reconciled when its lease runs out)."""
    loop = asyncio.get_running_loop()
    every = min(10.0, dispatcher.policy.lease_s / 4)
    next_reconcile = loop.time()
    while not stop.is_set():
        claimed = 0
        try:
            if loop.time() >= next_reconcile:
                next_reconcile = loop.time() + every
                await asyncio.to_thread(dispatcher.reconcile)
            claimed = await asyncio.to_thread(dispatcher.dispatch_pending, batch)
        except DATABASE_HICCUPS:  # a database hiccup must not stop the sender
            log.warning("dispatch.failed", exc_info=True)
        if not claimed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
