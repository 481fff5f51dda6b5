"""The consumer process: stores nudge and task requests idempotently, then dispatches nudges."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from consumers.dispatch import Dispatcher
from consumers.repository import store_nudges, store_tasks
from infra.kafka import CONSUMER_DEFAULTS, dead_letter
from schemas.events import NudgeRequested, TaskCreated

log = structlog.get_logger(__name__)
TOPICS = (NudgeRequested.topic, TaskCreated.topic)


class ConsumerWorker:
    """Offsets are committed after the rows are: a crash re-reads, and the keys dedupe."""

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
        """Send what is pending, beside the storing loop, in short transactions."""
        while not stop.is_set():
            try:
                claimed = await asyncio.to_thread(self.dispatcher.dispatch_pending, 100)
            except Exception as exc:  # a database hiccup must not stop the consumer
                log.warning("dispatch.failed", error=str(exc))
                claimed = 0
            if not claimed:
                await asyncio.sleep(0.02)

    async def _store(self, batches: dict[TopicPartition, list[Any]]) -> None:
        nudges: list[NudgeRequested] = []
        tasks: list[TaskCreated] = []
        letters = []
        for tp, messages in batches.items():
            for m in messages:
                try:
                    if tp.topic == NudgeRequested.topic:
                        nudges.append(NudgeRequested.model_validate_json(m.value))
                    else:
                        tasks.append(TaskCreated.model_validate_json(m.value))
                except (ValidationError, ValueError) as exc:
                    letters.append(
                        dead_letter(
                            "consumers", tp.topic, tp.partition, m.offset, m.key, m.value, str(exc)
                        )
                    )
        with self.sessions.begin() as session:
            stored_nudges = store_nudges(session, nudges)
            stored_tasks = store_tasks(session, tasks)
        for topic, key, value in letters:
            await self.producer.send_and_wait(topic, value=value, key=key)
        try:
            await self.consumer.commit({tp: m[-1].offset + 1 for tp, m in batches.items()})
        except CommitFailedError as exc:  # redelivered to the next owner; the keys dedupe
            log.warning("consumers.commit_failed", error=str(exc))
        log.info(
            "consumers.stored",
            nudges=stored_nudges,
            tasks=stored_tasks,
            repeats=len(nudges) + len(tasks) - stored_nudges - stored_tasks,
            dead_letters=len(letters),
        )
