"""The stream stage: reads input topics in batches, folds events into per-supporter state,
and publishes scores, nudges and tasks; offsets are committed only after outputs are acked.

State is derived from the input topics (the event log), not stored beside them: when a
partition is assigned, the worker replays it from the start up to the group's committed
offset without emitting, then carries on live. A crash after publishing and before
committing replays a few events; each output has a deterministic id and idempotency key,
so consumers act once.

Metrics (``engage_stream_*``, docs/stream-stage.md "Metrics and health") are updated here, in
the worker and its processor, never in the pure fold; ``StreamWorker.liveness`` backs the
process's /healthz.

Only bad input is dead-lettered: a record that does not parse, or an event the engine refuses
(``RefusedEvent``: dated far after it arrived, or outside the times the state keeps), each with
a warning naming its topic, partition and offset. Any other exception is a bug in our code: it
propagates and stops the worker (the supervisor restarts it), naming the record in a note.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
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
from infra.metrics import OBSERVE_EVERY_S, GroupLagWatch, Liveness, PartitionGauges
from infra.topic_reader import group_lags
from schemas.catalogue import INPUT_TOPICS, TOPICS
from schemas.events import INPUT_EVENT_TYPES, Event
from streams.engagement import NOT_PARSED, Engine, RefusedEvent, SupporterState, fold_order

log = structlog.get_logger(__name__)
GROUP = "engage-stream"
"""The stream workers' consumer group: every input topic, range-assigned."""
SUBSCRIBED = INPUT_TOPICS

RECORDS_IN = Counter(
    "engage_stream_records_in", "Input records fetched (restored ones included).", ["topic"]
)
RECORDS_OUT = Counter(
    "engage_stream_records_out",
    "Records published: scores, ladder changes, nudge and task requests, dead letters.",
    ["topic"],
)
BATCH_SECONDS = Histogram(
    "engage_stream_batch_seconds",
    "Time to fold a fetched batch and hand its outputs to the producer.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
LAG = Gauge(
    "engage_stream_lag_records",
    "Records of an assigned partition not yet processed: the fetch high watermark the "
    "consumer saw, less the offset processed (or committed, while restoring).",
    ["topic", "partition"],
)
RESTORE_TO_FOLD = Gauge(
    "engage_stream_restore_records_to_fold",
    "Records the restore after the last assignment folds (up to the committed offsets).",
)
RESTORE_FOLDED = Gauge(
    "engage_stream_restore_records_folded", "Of the records to restore, those folded so far."
)
DEAD_LETTERS = Counter(
    "engage_stream_dead_letters",
    "Input records dead-lettered, by topic and reason class (ValidationError, FutureEvent...).",
    ["topic", "reason"],
)


def _arrival(item: tuple[tuple[int, ...], str, Any, Any]) -> int:
    return item[0][0]


@dataclass
class EngagementProcessor:
    """Per-partition state and the fold over a batch; no Kafka here, so it is easy to test.

    Records of partition number p of every input topic go into one buffer and are folded in
    ``fold_order``. A record is released only when no co-partitioned topic that still has
    records to fetch could bring one that sorts before it (``caught_up`` names the
    topic-partitions fetched to their end; without it everything given is released).

    After an assignment each partition is read from the start: records below the group's
    committed offset are folded without emitting (the state is rebuilt), the rest live.
    ``done`` says how far each topic-partition has been processed: what may be committed.
    """

    engine: Engine
    states: dict[int, dict[str, SupporterState]] = field(default_factory=dict)
    restore_until: dict[tuple[str, int], int] = field(default_factory=dict)
    assigned: dict[int, list[tuple[str, int]]] = field(default_factory=dict)
    buffers: dict[int, list[tuple[tuple[int, ...], str, Any, Any]]] = field(default_factory=dict)
    seen: dict[tuple[str, int], int] = field(default_factory=dict)
    fetched: dict[tuple[str, int], int] = field(default_factory=dict)
    done: dict[tuple[str, int], int] = field(default_factory=dict)
    folded: int = 0

    def reset(
        self, assigned: Iterable[tuple[str, int]], committed: dict[tuple[str, int], int]
    ) -> None:
        self.states, self.buffers, self.seen, self.fetched, self.done = {}, {}, {}, {}, {}
        self.assigned = {}
        for topic, partition in assigned:
            self.assigned.setdefault(partition, []).append((topic, partition))
        self.restore_until = {tp: committed[tp] for tp in committed if committed.get(tp)}

    def restore_progress(self) -> tuple[int, int]:
        """(records folded, records to fold) of the restore since the last assignment."""
        folded = sum(min(self.done.get(tp, 0), limit) for tp, limit in self.restore_until.items())
        return folded, sum(self.restore_until.values())

    def restoring(self, partition: int) -> bool:
        return any(
            p == partition and self.done.get((t, p), 0) < limit
            for (t, p), limit in self.restore_until.items()
        )

    def process(
        self,
        topic: str,
        partition: int,
        messages: Iterable[Any],
        caught_up: Container[tuple[str, int]] | None = None,
    ) -> list[Record]:
        self.add(topic, partition, messages)
        return self.release(partition, caught_up)

    def add(self, topic: str, partition: int, messages: Iterable[Any]) -> None:
        buffer = self.buffers.setdefault(partition, [])
        model = INPUT_EVENT_TYPES[topic]
        last = None
        for message in messages:
            parsed: Any
            try:
                parsed = model.model_validate_json(message.value)
                event_ms = int(parsed.event_time.timestamp() * 1000)
            except ValidationError as exc:  # dead-lettered when released, in its place
                parsed, event_ms = exc, NOT_PARSED
            key = fold_order(max(message.timestamp or 0, 0), event_ms, topic, message.offset)
            buffer.append((key, topic, message, parsed))
            last = message
        if last is not None:
            self.seen[(topic, partition)] = max(last.timestamp or 0, 0)
            self.fetched[(topic, partition)] = last.offset + 1

    def release(
        self, partition: int, caught_up: Container[tuple[str, int]] | None = None
    ) -> list[Record]:
        """Fold the buffered records of ``partition`` that nothing still unfetched can
        precede; return what they cause."""
        buffer = self.buffers.get(partition)
        if not buffer:
            return []
        buffer.sort(key=itemgetter(0))
        ready = len(buffer)
        if caught_up is not None:
            waiting = [
                self.seen.get(tp, -1)
                for tp in self.assigned.get(partition, ())
                if tp not in caught_up
            ]
            if waiting:
                ready = bisect.bisect_left(buffer, min(waiting), key=_arrival)
        released, self.buffers[partition] = buffer[:ready], buffer[ready:]
        self.folded += len(released)
        outputs: list[Record] = []
        for _, topic, message, parsed in released:
            live = message.offset >= self.restore_until.get((topic, partition), 0)
            outputs.extend(self._fold(topic, partition, message, parsed, live))
        pending: dict[tuple[str, int], int] = {}
        for _, topic, message, _ in self.buffers[partition]:
            tp = (topic, partition)
            pending[tp] = min(pending.get(tp, message.offset), message.offset)
        for tp in {(t, partition) for _, t, _, _ in released} | set(pending):
            self.done[tp] = pending.get(tp, self.fetched.get(tp, 0))
        return outputs

    def release_all(self, caught_up: Container[tuple[str, int]] | None) -> list[tuple[int, Record]]:
        return [
            (partition, record)
            for partition in list(self.buffers)
            for record in self.release(partition, caught_up)
        ]

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

    def _fold(
        self, topic: str, partition: int, message: Any, parsed: Any, emit: bool
    ) -> list[Record]:
        if isinstance(parsed, ValidationError):
            return self._refuse(topic, partition, message, parsed, emit)
        event: Event = parsed
        states = self.states.setdefault(partition, {})
        sid = event.key()
        state = states.get(sid)
        if state is None:
            state = states[sid] = SupporterState()
        arrived = message.timestamp / 1000 if (message.timestamp or 0) > 0 else None
        try:
            caused = self.engine.apply(state, event, arrived, emit)
        except RefusedEvent as exc:  # bad input: a dead letter, and the partition goes on
            return self._refuse(topic, partition, message, exc, emit, event)
        except Exception as exc:  # a bug: stop, saying which record it was
            with record_context(topic, partition, message.offset, event.event_id, sid):
                log.error("stream.fold_failed", error=type(exc).__name__, live=emit)
            exc.add_note(
                f"while folding {topic} partition {partition} offset {message.offset} "
                f"(event_id {event.event_id})"
            )
            raise
        key = sid.encode()  # every output is keyed by the supporter, as its cause is
        return [(out.topic, key, out.model_dump_json().encode()) for out in caused]

    @staticmethod
    def _refuse(
        topic: str,
        partition: int,
        message: Any,
        exc: ValueError,
        emit: bool,
        event: Event | None = None,
    ) -> list[Record]:
        """A dead letter for bad input (none again for a record replayed to rebuild state)."""
        if not emit:
            return []
        event_id, sid = (event.event_id, event.key()) if event is not None else (None, None)
        with record_context(topic, partition, message.offset, event_id, sid):
            log.warning("stream.dead_letter", reason=input_error(exc))
        DEAD_LETTERS.labels(topic, type(exc).__name__).inc()
        error = f"{type(exc).__name__}: {exc}"
        return [
            dead_letter(
                "stream", topic, partition, message.offset, message.key, message.value, error
            )
        ]


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: StreamWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            await self.worker.settle()
        except KafkaError:  # the next owner replays it; outputs are idempotent
            log.warning("stream.commit_failed", exc_info=True)
        except Exception as exc:  # aiokafka would log and swallow it: the worker's loop raises it
            self.worker.failed = exc
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
        group_id: str = GROUP,
        clock: Callable[[], float] = time.time,
        tick_seconds: float = 60.0,
        consumer_settings: ConsumerSettings = CONSUMER_DEFAULTS,
        health_stale_s: float = 60.0,
    ) -> None:
        """``clock`` tells the time lapse timers go by (tests move it); every
        ``tick_seconds`` of real time the worker asks what that time has caused.
        ``health_stale_s``: the patience of the health rule (``infra.metrics.Liveness``)."""
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.consumer_settings = consumer_settings
        self.failed: BaseException | None = None  # raised in a rebalance callback
        self.processor = EngagementProcessor(engine)
        self.clock = clock
        self.tick_seconds = tick_seconds
        self.processed = 0  # records folded
        self.fetched = 0  # records handed over by the consumer (some may wait in the buffer)
        self.co_partitioned = False
        self._settling: asyncio.Task[None] | None = None
        self.liveness = Liveness("stream", health_stale_s)
        self._observed_at = 0.0  # monotonic
        self._lag = PartitionGauges(LAG)

    async def run(self, stop: asyncio.Event) -> None:
        self.consumer = group_consumer(
            self.bootstrap, self.group_id, "engage-stream", self.consumer_settings
        )
        self.producer = output_producer(
            self.bootstrap, "engage-stream", linger_ms=5, max_batch_size=256 * 1024
        )
        await self.producer.start()
        counts = {len(await self.producer.partitions_for(spec.name)) for spec in TOPICS}
        # Same key, same partition count: an output belongs on its input's partition number,
        # so the producer can skip hashing every key (murmur2 in Python, ~10 us a record).
        self.co_partitioned = len(counts) == 1
        self.consumer.subscribe(list(SUBSCRIBED), listener=_Rebalance(self))
        await self.consumer.start()
        watch = GroupLagWatch(self._group_lag, self.liveness).start()
        next_tick = time.monotonic() + self.tick_seconds
        try:
            while not stop.is_set():
                batches = await self.consumer.getmany(timeout_ms=200, max_records=5000)
                if self.failed is not None:
                    raise self.failed
                if batches or any(self.processor.buffers.values()):
                    folded = self.processor.folded
                    with BATCH_SECONDS.time():
                        await self._handle(batches)
                    if batches or self.processor.folded > folded:
                        self.liveness.batch()
                self._observe()
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.tick_seconds
                    await self._tick()
            await self.settle()
        except Exception:
            # A bug (or a failed publish) stops the worker; the batch in flight was folded
            # before it, so it is committed once its outputs are acknowledged.
            try:
                await self.settle()
            except Exception:
                log.warning("stream.commit_failed", exc_info=True)
            raise
        finally:
            watch.stop()
            await self.consumer.stop()
            await self.producer.stop()

    def _observe(self) -> None:
        """Lag per assigned partition and restore progress, as metrics and for the health
        check: from the high watermark of the consumer's last fetch (not ListOffsets, which
        Tansu answers wrongly)."""
        if time.monotonic() < self._observed_at + OBSERVE_EVERY_S:
            return
        self._observed_at = time.monotonic()
        processor, lags = self.processor, {}
        done, restore_until = processor.done, processor.restore_until
        assignment = self.consumer.assignment()
        for tp in assignment:
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            key = (tp.topic, tp.partition)
            lags[key] = max(high - max(done.get(key, 0), restore_until.get(key, 0)), 0)
        self._lag.update(lags)
        folded, to_fold = processor.restore_progress()
        RESTORE_TO_FOLD.set(to_fold)
        RESTORE_FOLDED.set(folded)
        self.liveness.polled(len(assignment), sum(lags.values()))

    def _group_lag(self) -> tuple[int, int]:
        """The group's lag and committed offsets (read while this member has no partitions)."""
        lag = group_lags(self.bootstrap, {self.group_id: SUBSCRIBED})[self.group_id]
        return lag.lag, lag.committed

    async def _handle(self, batches: dict[TopicPartition, list[Any]]) -> None:
        """Process a batch while the previous one's outputs are still being acknowledged;
        then send this batch's outputs and commit its offsets once they are acked."""
        for tp, messages in batches.items():
            self.processor.add(tp.topic, tp.partition, messages)
        outputs = self.processor.release_all(await self._caught_up())
        offsets = {TopicPartition(t, p): o for (t, p), o in self.processor.done.items()}
        await self.settle()
        futures = await self._publish(outputs)
        self._settling = asyncio.create_task(self._commit_when_acked(futures, offsets))
        for tp, messages in batches.items():
            RECORDS_IN.labels(tp.topic).inc(len(messages))
        events = sum(len(m) for m in batches.values())
        self.fetched += events
        self.processed = self.processor.folded
        log.info("stream.batch", events=events, outputs=len(outputs), partitions=len(batches))

    async def _caught_up(self) -> set[tuple[str, int]]:
        """The assigned topic-partitions whose every record has been handed to us."""
        done: set[tuple[str, int]] = set()
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is not None and await self.consumer.position(tp) >= high:
                done.add((tp.topic, tp.partition))
        return done

    async def _tick(self) -> None:
        outputs = self.processor.tick(self.clock())
        if outputs:
            await asyncio.gather(*await self._publish(outputs))
            log.info("stream.tick", outputs=len(outputs))

    async def _publish(self, outputs: list[tuple[int, Record]]) -> list[asyncio.Future[Any]]:
        """Send the outputs; co-partitioned, as one record batch per topic-partition."""
        if not self.co_partitioned:
            for _, (topic, _, _) in outputs:
                RECORDS_OUT.labels(topic).inc()
            return [
                await self.producer.send(topic, value=value, key=key)
                for _, (topic, key, value) in outputs
            ]
        grouped: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}
        for partition, (topic, key, value) in outputs:
            grouped.setdefault((topic, partition), []).append((key, value))
        futures: list[asyncio.Future[Any]] = []
        for (topic, partition), records in grouped.items():
            RECORDS_OUT.labels(topic).inc(len(records))
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
