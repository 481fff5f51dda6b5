"""The stream stage: reads input topics in batches, folds events into per-supporter state,
and publishes scores, nudges and tasks; offsets are committed only after outputs are acked.

State is derived from the input topics (the event log), not stored beside them: when a
partition is assigned, the worker replays it from the start up to the group's committed
offset without emitting, then carries on live. A crash after publishing and before
committing replays a few events; each output has a deterministic id and idempotency key,
so consumers act once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from infra.kafka import CONSUMER_DEFAULTS, Record, dead_letter
from schemas.catalogue import INPUT_TOPICS, TOPICS
from schemas.events import INPUT_EVENT_TYPES, Event
from streams.engagement import Engine, SupporterState

log = structlog.get_logger(__name__)


@dataclass
class EngagementProcessor:
    """Per-partition state and the fold over a batch; no Kafka here, so it is easy to test.

    After an assignment, partition number p of every input topic is replayed (folded without
    emitting) up to its committed offset. Live records of partition p are held back until
    the replay of *every* topic's partition p is complete, so a live event never meets
    half-restored state. ``done`` says how far each topic-partition has been processed,
    which is what may be committed.
    """

    engine: Engine
    states: dict[int, dict[str, SupporterState]] = field(default_factory=dict)
    restore_until: dict[tuple[str, int], int] = field(default_factory=dict)
    held: dict[int, list[tuple[str, Any]]] = field(default_factory=dict)
    done: dict[tuple[str, int], int] = field(default_factory=dict)

    def reset(
        self, assigned: Iterable[tuple[str, int]], committed: dict[tuple[str, int], int]
    ) -> None:
        self.states, self.held, self.done = {}, {}, {}
        self.restore_until = {tp: committed[tp] for tp in assigned if committed.get(tp)}

    def restoring(self, partition: int) -> bool:
        return any(p == partition for _, p in self.restore_until)

    def process(self, topic: str, partition: int, messages: Iterable[Any]) -> list[Record]:
        outputs: list[Record] = []
        limit = self.restore_until.get((topic, partition), 0)
        for message in messages:
            if message.offset < limit:
                self._fold(topic, partition, message, emit=False)
                self.done[(topic, partition)] = message.offset + 1
                if message.offset + 1 >= limit:
                    del self.restore_until[(topic, partition)]
                    limit = 0
            elif self.restoring(partition):
                self.held.setdefault(partition, []).append((topic, message))
            else:
                outputs.extend(self._live(topic, partition, message))
        if not self.restoring(partition):
            for held_topic, message in self.held.pop(partition, []):
                outputs.extend(self._live(held_topic, partition, message))
        return outputs

    def tick(self, now: float) -> list[tuple[int, Record]]:
        """What time alone causes (lapse rules, falling rungs), for the partitions restored."""
        outputs: list[tuple[int, Record]] = []
        for partition, states in self.states.items():
            if self.restoring(partition):
                continue
            outputs.extend(
                (partition, (out.topic, out.key().encode(), out.model_dump_json().encode()))
                for out in self.engine.tick(states, now)
            )
        return outputs

    def _live(self, topic: str, partition: int, message: Any) -> list[Record]:
        self.done[(topic, partition)] = message.offset + 1
        return self._fold(topic, partition, message, emit=True)

    def _fold(self, topic: str, partition: int, message: Any, emit: bool) -> list[Record]:
        states = self.states.setdefault(partition, {})
        try:
            event: Event = INPUT_EVENT_TYPES[topic].model_validate_json(message.value)
            sid = event.key()
            state = states.get(sid)
            if state is None:
                state = states[sid] = SupporterState()
            arrived = message.timestamp / 1000 if message.timestamp else None
            caused = self.engine.apply(state, event, arrived, emit)
        except Exception as exc:  # a bad event must not stop the partition
            if not emit:
                return []
            error = f"{type(exc).__name__}: {exc}"
            return [
                dead_letter(
                    "stream", topic, partition, message.offset, message.key, message.value, error
                )
            ]
        return [(out.topic, out.key().encode(), out.model_dump_json().encode()) for out in caused]


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: StreamWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            await self.worker.settle()
        except Exception as exc:  # the next owner replays it; outputs are idempotent
            log.warning("stream.commit_failed", error=str(exc))
        log.info("stream.revoked", partitions=len(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self.worker.consumer
        committed: dict[tuple[str, int], int] = {}
        for tp in assigned:
            committed[(tp.topic, tp.partition)] = await consumer.committed(tp) or 0
        self.worker.processor.reset(committed, committed)
        if assigned:
            await consumer.seek_to_beginning(*assigned)
        log.info(
            "stream.assigned",
            partitions=len(assigned),
            replaying=sum(committed.values()),
        )


class StreamWorker:
    def __init__(
        self,
        bootstrap: str,
        engine: Engine,
        group_id: str = "engage-stream",
        clock: Callable[[], float] = time.time,
        tick_seconds: float = 60.0,
    ) -> None:
        """``clock`` tells the time lapse timers go by (tests move it); every
        ``tick_seconds`` of real time the worker asks what that time has caused."""
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.processor = EngagementProcessor(engine)
        self.clock = clock
        self.tick_seconds = tick_seconds
        self.processed = 0
        self.co_partitioned = False
        self._settling: asyncio.Task[None] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            client_id="engage-stream",
            **CONSUMER_DEFAULTS,
        )
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id="engage-stream",
            acks="all",
            linger_ms=5,
            max_batch_size=256 * 1024,
        )
        await self.producer.start()
        counts = {len(await self.producer.partitions_for(spec.name)) for spec in TOPICS}
        # Same key, same partition count: an output belongs on its input's partition number,
        # so the producer can skip hashing every key (murmur2 in Python, ~10 us a record).
        self.co_partitioned = len(counts) == 1
        self.consumer.subscribe(list(INPUT_TOPICS), listener=_Rebalance(self))
        await self.consumer.start()
        next_tick = time.monotonic() + self.tick_seconds
        try:
            while not stop.is_set():
                batches = await self.consumer.getmany(timeout_ms=200, max_records=5000)
                if batches:
                    await self._handle(batches)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.tick_seconds
                    await self._tick()
            await self.settle()
        finally:
            await self.consumer.stop()
            await self.producer.stop()

    async def _handle(self, batches: dict[TopicPartition, list[Any]]) -> None:
        """Process a batch while the previous one's outputs are still being acknowledged;
        then send this batch's outputs and commit its offsets once they are acked."""
        outputs: list[tuple[int, Record]] = []
        for tp, messages in batches.items():
            outputs.extend(
                (tp.partition, record)
                for record in self.processor.process(tp.topic, tp.partition, messages)
            )
        offsets = {TopicPartition(t, p): o for (t, p), o in self.processor.done.items()}
        await self.settle()
        futures = await self._publish(outputs)
        self._settling = asyncio.create_task(self._commit_when_acked(futures, offsets))
        events = sum(len(m) for m in batches.values())
        self.processed += events
        log.info("stream.batch", events=events, outputs=len(outputs), partitions=len(batches))

    async def _tick(self) -> None:
        outputs = self.processor.tick(self.clock())
        if outputs:
            await asyncio.gather(*await self._publish(outputs))
            log.info("stream.tick", outputs=len(outputs))

    async def _publish(self, outputs: list[tuple[int, Record]]) -> list[asyncio.Future[Any]]:
        """Send the outputs; co-partitioned, as one record batch per topic-partition."""
        if not self.co_partitioned:
            return [
                await self.producer.send(topic, value=value, key=key)
                for _, (topic, key, value) in outputs
            ]
        grouped: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}
        for partition, (topic, key, value) in outputs:
            grouped.setdefault((topic, partition), []).append((key, value))
        futures: list[asyncio.Future[Any]] = []
        for (topic, partition), records in grouped.items():
            batch = self.producer.create_batch()
            for key, value in records:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    batch.close()
                    futures.append(
                        await self.producer.send_batch(batch, topic, partition=partition)
                    )
                    batch = self.producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            batch.close()
            futures.append(await self.producer.send_batch(batch, topic, partition=partition))
        return futures

    async def _commit_when_acked(
        self, futures: list[asyncio.Future[Any]], offsets: dict[TopicPartition, int]
    ) -> None:
        if futures:
            await asyncio.gather(*futures)
        assigned = self.consumer.assignment()
        offsets = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        try:
            if offsets:
                await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group moved on (an eviction or a rebalance): the partitions' next owner
            # replays from the last commit, and every output it repeats is deduplicated.
            log.warning("stream.commit_failed", error=str(exc))

    async def settle(self) -> None:
        """Wait for the batch in flight: its outputs acked and its offsets committed."""
        if self._settling is not None:
            settling, self._settling = self._settling, None
            await settling
