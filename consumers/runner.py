"""The consumer process: stores nudge and task requests idempotently, then dispatches nudges;
keeps the newest engagement score per supporter (a read model)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from consumers.dispatch import Dispatcher
from consumers.repository import store_nudges, store_scores, store_tasks, unstorable_score
from infra.kafka import CONSUMER_DEFAULTS, Record, dead_letter
from schemas.events import EngagementScored, Event, NudgeRequested, TaskCreated

log = structlog.get_logger(__name__)
MODELS: dict[str, type[Event]] = {
    m.topic: m for m in (NudgeRequested, TaskCreated, EngagementScored)
}
TOPICS = tuple(MODELS)


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
        model = MODELS.get(tp.topic)
        for m in messages:
            try:
                if model is None:
                    raise ValueError(f"no model for topic {tp.topic!r}")
                event = model.model_validate_json(m.value)
                if isinstance(event, NudgeRequested):
                    batch.nudges.append(event)
                elif isinstance(event, TaskCreated):
                    batch.tasks.append(event)
                elif isinstance(event, EngagementScored):
                    problem = unstorable_score(event)
                    if problem is not None:
                        raise ValueError(problem)
                    batch.scores.append(event)
            except (ValidationError, ValueError) as exc:
                batch.letters.append(
                    dead_letter(
                        "consumers", tp.topic, tp.partition, m.offset, m.key, m.value, str(exc)
                    )
                )
    return batch


class ConsumerWorker:
    """Offsets are committed after the rows are: a crash re-reads, and the keys dedupe (a
    re-read score rewrites the values it wrote before, or loses to a newer one)."""

    def __init__(
        self,
        bootstrap: str,
        sessions: sessionmaker[Session],
        dispatcher: Dispatcher,
        group_id: str = "engage-consumers",
    ) -> None:
        self.sessions = sessions
        self.dispatcher = dispatcher
        self.bootstrap = bootstrap
        self.group_id = group_id

    async def run(self, stop: asyncio.Event) -> None:
        self.consumer = AIOKafkaConsumer(
            *TOPICS,
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            client_id="engage-consumers",
            **CONSUMER_DEFAULTS,
        )
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, client_id="engage-consumers", acks="all"
        )
        await self.producer.start()
        await self.consumer.start()
        dispatching = asyncio.create_task(self._dispatch_until(stop))
        try:
            while not stop.is_set():
                batches = await self.consumer.getmany(timeout_ms=100, max_records=2000)
                if batches:
                    await self._store(batches)
        finally:
            stop.set()
            await dispatching
            await self.consumer.stop()
            await self.producer.stop()

    async def _dispatch_until(self, stop: asyncio.Event) -> None:
        await send_until(self.dispatcher, stop)

    async def _store(self, batches: dict[TopicPartition, list[Any]]) -> None:
        batch = parse_batch(batches)
        with self.sessions.begin() as session:
            stored_nudges = store_nudges(session, batch.nudges)
            stored_tasks = store_tasks(session, batch.tasks)
            stored_scores = store_scores(session, batch.scores)
        for topic, key, value in batch.letters:
            await self.producer.send_and_wait(topic, value=value, key=key)
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


async def send_until(dispatcher: Dispatcher, stop: asyncio.Event, batch: int = 100) -> None:
    """Send what is due in short transactions until ``stop``; reconcile stale claims and
    ambiguous sends every few seconds. A failing database is logged and tried again."""
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
        except Exception as exc:  # a database hiccup must not stop the sender
            log.warning("dispatch.failed", error=str(exc))
        if not claimed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
