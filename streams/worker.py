"""The stream stage: reads input topics in batches, folds events into per-supporter state,
and publishes scores, nudges and tasks; offsets are committed only after outputs are acked.

State is derived from the input topics (the event log) and saved in snapshots
(streams/snapshots.py) at committed offsets: when a partition is assigned, the worker keeps
it (if it held it already), or loads its snapshot, or else replays it from the start, folding
without emitting up to the group's committed offset, then carries on live. A crash after
publishing and before committing replays a few events; each output has a deterministic id and
idempotency key, so consumers act once.

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
import gc
import time
from collections.abc import Callable, Container, Iterable, Mapping
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
from infra.membership import member_client_id
from infra.metrics import OBSERVE_EVERY_S, GroupLagWatch, Liveness, PartitionGauges
from infra.topic_reader import group_lags, record_checks
from schemas.catalogue import INPUT_TOPICS, TOPICS
from schemas.events import INPUT_EVENT_TYPES, Event, encoded
from streams.engagement import (
    NOT_PARSED,
    Engine,
    RefusedEvent,
    SupporterState,
    decode_state,
    encode_state,
    fold_order,
)
from streams.snapshots import SnapshotStore

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
RESTORE_LOADED = Gauge(
    "engage_stream_restore_supporters_loaded",
    "Supporters whose state the last assignment loaded from snapshots (streams/snapshots.py).",
)
DEAD_LETTERS = Counter(
    "engage_stream_dead_letters",
    "Input records dead-lettered, by topic and reason class (ValidationError, FutureEvent...).",
    ["topic", "reason"],
)


def _arrival(item: tuple[tuple[int, ...], str, Any, Any]) -> int:
    return item[0][0]


@dataclass
class PendingSnapshot:
    """A partition's snapshot taken from the processor, on its way to the store."""

    partition: int
    offsets: dict[tuple[str, int], int]
    states: dict[str, bytes]
    replace: bool
    expected: dict[tuple[str, int], int] | None
    changed: set[str]


@dataclass
class EngagementProcessor:
    """Per-partition state and the fold over a batch; no Kafka here, so it is easy to test.

    Records of partition number p of every input topic go into one buffer and are folded in
    ``fold_order``. A record is released only when no co-partitioned topic that still has
    records to fetch could bring one that sorts before it (``caught_up`` names the
    topic-partitions fetched to their end; without it everything given is released).

    After an assignment (``reset``) each partition is kept, loaded from a snapshot or read
    from the start: records below the group's committed offset are folded without emitting
    (the state is rebuilt), the rest live. ``done`` says how far each topic-partition has been
    processed: what may be committed. ``dirty`` names the supporters changed since the last
    snapshot (``take_snapshot``).
    """

    engine: Engine
    states: dict[int, dict[str, SupporterState]] = field(default_factory=dict)
    restore_until: dict[tuple[str, int], int] = field(default_factory=dict)
    assigned: dict[int, list[tuple[str, int]]] = field(default_factory=dict)
    buffers: dict[int, list[tuple[tuple[int, ...], str, Any, Any]]] = field(default_factory=dict)
    seen: dict[tuple[str, int], int] = field(default_factory=dict)
    fetched: dict[tuple[str, int], int] = field(default_factory=dict)
    done: dict[tuple[str, int], int] = field(default_factory=dict)
    start: dict[tuple[str, int], int] = field(default_factory=dict)
    dirty: dict[int, set[str]] = field(default_factory=dict)
    replace: set[int] = field(default_factory=set)
    rejected: dict[int, dict[tuple[str, int], int]] = field(default_factory=dict)
    folded: int = 0

    def keepable(
        self, assigned: Iterable[tuple[str, int]], committed: dict[tuple[str, int], int]
    ) -> set[int]:
        """The partitions of a new assignment whose state this processor already holds as of
        the committed offsets (kept across the rebalance: nothing to restore)."""
        wanted: dict[int, set[tuple[str, int]]] = {}
        for topic, partition in assigned:
            wanted.setdefault(partition, set()).add((topic, partition))
        return {
            p
            for p, tps in wanted.items()
            if p in self.states
            and set(self.assigned.get(p, ())) == tps
            and all(self.done.get(tp, 0) == committed.get(tp, 0) for tp in tps)
        }

    def reset(
        self,
        assigned: Iterable[tuple[str, int]],
        committed: dict[tuple[str, int], int],
        snapshots: Mapping[int, tuple[Mapping[tuple[str, int], int], dict[str, SupporterState]]]
        | None = None,
        rejected: Mapping[int, dict[tuple[str, int], int]] | None = None,
    ) -> dict[tuple[str, int], int]:
        """Take a new assignment; return the offset to read each topic-partition from (0: its
        beginning). A partition kept (``keepable``) keeps its state and goes on from the
        committed offsets; one with a snapshot (its offsets, at or below the committed ones,
        and its states) starts from it; any other is rebuilt from the beginning. Records below
        the committed offsets are folded without emitting.

        ``rejected``: the saved offsets of partitions whose snapshot was not loaded, so that
        this processor's first snapshot of them may replace it."""
        assigned = list(assigned)
        kept = self.keepable(assigned, committed)
        by_partition: dict[int, list[tuple[str, int]]] = {}
        for topic, partition in assigned:
            by_partition.setdefault(partition, []).append((topic, partition))
        states, dirty = self.states, self.dirty
        self.states = {p: states[p] for p in kept}
        self.dirty = {p: dirty.get(p, set()) for p in kept}
        self.replace = {p for p in kept if p in self.replace}
        self.rejected = {p: v for p, v in self.rejected.items() if p in kept}
        self.rejected.update(rejected or {})
        start: dict[tuple[str, int], int] = {}
        for p, tps in by_partition.items():
            if p in kept:
                start.update({tp: committed.get(tp, 0) for tp in tps})
                continue
            self.dirty[p] = set()
            if snapshots is not None and p in snapshots:
                offsets, self.states[p] = snapshots[p]
                start.update({tp: offsets.get(tp, 0) for tp in tps})
            else:
                self.replace.add(p)
                start.update({tp: 0 for tp in tps})
        self.buffers, self.seen, self.fetched = {}, {}, {}
        self.done = {tp: offset for tp, offset in start.items() if offset}
        self.start, self.assigned = start, by_partition
        self.restore_until = {
            tp: offset for tp, offset in committed.items() if offset > start.get(tp, 0)
        }
        return dict(start)

    def restore_progress(self) -> tuple[int, int]:
        """(records folded, records to fold) of the restore since the last assignment."""
        start = self.start
        folded = sum(
            max(min(self.done.get(tp, 0), limit) - start.get(tp, 0), 0)
            for tp, limit in self.restore_until.items()
        )
        return folded, sum(limit - start.get(tp, 0) for tp, limit in self.restore_until.items())

    def states_of(self, sid: str) -> SupporterState | None:
        """A supporter's state, whichever assigned partition holds it."""
        for states in self.states.values():
            if sid in states:
                return states[sid]
        return None

    def take_snapshot(
        self, partition: int, committed: Mapping[tuple[str, int], int]
    ) -> PendingSnapshot | None:
        """What to save of ``partition``: its offsets and the states changed since the last
        save (every state, when the partition was rebuilt from the log), or None when there is
        nothing new or its state reflects records whose offsets are not all committed yet.
        The changed states count as saved from now on; ``unsaved`` puts them back."""
        tps = self.assigned.get(partition, ())
        offsets = {tp: self.done.get(tp, 0) for tp in tps}
        if not offsets or any(offsets[tp] > committed.get(tp, 0) for tp in tps):
            return None
        replace = partition in self.replace
        changed, self.dirty[partition] = self.dirty.get(partition, set()), set()
        states = self.states.get(partition, {})
        if not changed and not replace:
            return None
        names = states.keys() if replace else changed
        rows = {sid: encode_state(states[sid]) for sid in names if sid in states}
        return PendingSnapshot(
            partition, offsets, rows, replace, self.rejected.get(partition), changed
        )

    def saved(self, snapshot: PendingSnapshot) -> None:
        if snapshot.partition in self.states:
            self.replace.discard(snapshot.partition)
            self.rejected.pop(snapshot.partition, None)

    def unsaved(self, snapshot: PendingSnapshot) -> None:
        """A snapshot that was not saved: its states count as changed again."""
        if snapshot.partition in self.dirty:
            self.dirty[snapshot.partition] |= snapshot.changed

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
                (partition, (out.topic, out.key().encode(), encoded(out)))
                for out in self.engine.tick(
                    states, now, touched=self.dirty.setdefault(partition, set())
                )
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
        self.dirty.setdefault(partition, set()).add(sid)
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
        return [(out.topic, key, encoded(out)) for out in caused]

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


def collect_less() -> None:
    """Garbage collection for a process that allocates a few short-lived objects per event and
    keeps every supporter's state: what exists when it starts is frozen out of collections, and
    the youngest generation is collected every 50,000 allocations, not every 700 (the profile
    put 6% of the fold's CPU in the collector; the fold bench ran 7% faster)."""
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: StreamWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            await self.worker.settle()
            await self.worker.snapshot(wait=True)
        except KafkaError:  # the next owner replays it; outputs are idempotent
            log.warning("stream.commit_failed", exc_info=True)
        except Exception as exc:  # aiokafka would log and swallow it: the worker's loop raises it
            self.worker.failed = exc
        log.info("stream.revoked", partitions=len(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Restore the assigned partitions' state (kept, loaded, or rebuilt) and seek to
        where it ends. The partitions stay paused meanwhile: the worker's loop would otherwise
        be handed, fold and commit records while the state is being loaded."""
        consumer = self.worker.consumer
        if assigned:
            consumer.pause(*assigned)
        try:
            await self._assign(assigned)
        finally:
            if assigned:
                consumer.resume(*assigned)

    async def _assign(self, assigned: set[TopicPartition]) -> None:
        worker = self.worker
        worker.assigned_at = time.monotonic()
        consumer, processor = worker.consumer, worker.processor
        committed: dict[tuple[str, int], int] = {}
        for tp in assigned:
            committed[(tp.topic, tp.partition)] = await consumer.committed(tp) or 0
        worker.committed = dict(committed)
        started = time.perf_counter()
        kept = processor.keepable(committed, committed)
        load = {p for _, p in committed} - kept
        try:
            snapshots, rejected = await worker.load_snapshots(load, committed)
        except Exception as exc:  # aiokafka would log and swallow it: the worker's loop raises it
            worker.failed = exc
            snapshots, rejected = {}, {}
        # Where "the beginning" is, once retention has deleted records.
        firsts = await consumer.beginning_offsets(list(assigned)) if assigned else {}
        # Nothing below awaits: records the consumer fetched meanwhile from its own idea of
        # the positions went to the state being replaced, and a seek discards the rest.
        start = processor.reset(committed, committed, snapshots, rejected)
        for tp in assigned:
            key = (tp.topic, tp.partition)
            offset = start.get(key) or firsts.get(tp, 0)
            processor.start[key] = offset
            if offset > processor.done.get(key, 0):
                processor.done[key] = offset
            consumer.seek(tp, offset)
        worker.last_assignment = {
            "partitions": len({p for _, p in committed}),
            "kept": len(kept),
            "loaded": len(snapshots),
            "rejected": len(rejected),
            "supporters_loaded": sum(len(states) for _, states in snapshots.values()),
            "replaying": sum(max(c - start.get(tp, 0), 0) for tp, c in committed.items()),
        }
        RESTORE_LOADED.set(worker.last_assignment["supporters_loaded"])
        log.info(
            "stream.assigned",
            topic_partitions=len(assigned),
            load_s=round(time.perf_counter() - started, 3),
            **worker.last_assignment,
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
        snapshots: SnapshotStore | None = None,
        snapshot_seconds: float = 30.0,
    ) -> None:
        """``clock`` tells the time lapse timers go by (tests move it); every
        ``tick_seconds`` of real time the worker asks what that time has caused.
        ``health_stale_s``: the patience of the health rule (``infra.metrics.Liveness``).
        ``snapshots``: where the state is saved every ``snapshot_seconds``, when partitions
        are revoked and when the worker stops, and restored from on assignment (without it,
        every assigned partition is rebuilt from the beginning of the log)."""
        self.bootstrap = bootstrap
        self.snapshots = snapshots
        self.snapshot_seconds = snapshot_seconds
        self.committed: dict[tuple[str, int], int] = {}  # offsets known to be committed
        self.last_assignment: dict[str, int] = {}  # partitions kept, loaded, records replayed
        self.assigned_at: float | None = None  # time.monotonic() of the last assignment
        self._saving: asyncio.Task[None] | None = None
        self.group_id = group_id
        self.consumer_settings = consumer_settings
        self.failed: BaseException | None = None  # raised in a rebalance callback
        self.processor = EngagementProcessor(engine)
        self.clock = clock
        self.tick_seconds = tick_seconds
        self.processed = 0  # records folded
        self.fetched = 0  # records handed over by the consumer (some may wait in the buffer)
        self.first_fetch_at: float | None = None  # time.time() when the first records came
        self.co_partitioned = False
        self._settling: asyncio.Task[None] | None = None
        self.liveness = Liveness("stream", health_stale_s)
        self._observed_at = 0.0  # monotonic
        self._lag = PartitionGauges(LAG)

    async def run(self, stop: asyncio.Event) -> None:
        collect_less()
        self.consumer = group_consumer(  # the pid in the client id: see infra.membership
            self.bootstrap, self.group_id, member_client_id("engage-stream"), self.consumer_settings
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
        next_snapshot = time.monotonic() + self.snapshot_seconds
        try:
            while not stop.is_set():
                batches = await self.consumer.getmany(timeout_ms=200, max_records=5000)
                if self.failed is not None:
                    raise self.failed
                if batches and self.first_fetch_at is None:
                    self.first_fetch_at = time.time()
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
                if time.monotonic() >= next_snapshot:
                    next_snapshot = time.monotonic() + self.snapshot_seconds
                    await self.snapshot()
            await self.settle()
            await self.snapshot(wait=True)
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
        """The assigned topic-partitions whose every record has been handed to us: counted
        from the records handed over, not from the consumer's position, which also counts
        records it has prefetched and not yet returned."""
        done: set[tuple[str, int]] = set()
        fetched, start = self.processor.fetched, self.processor.start
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            key = (tp.topic, tp.partition)
            if high is not None and fetched.get(key, start.get(key, 0)) >= high:
                done.add(key)
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
                self.committed.update({(tp.topic, tp.partition): o for tp, o in offsets.items()})
        except (CommitFailedError, IllegalStateError) as exc:
            # The group moved on (an eviction or a rebalance): the partitions' next owner
            # replays from the last commit, and every output it repeats is deduplicated.
            log.warning("stream.commit_failed", error=str(exc))

    async def settle(self) -> None:
        """Wait for the batch in flight: its outputs acked and its offsets committed."""
        if self._settling is not None:
            settling, self._settling = self._settling, None
            await settling

    async def snapshot(self, wait: bool = False) -> None:
        """Save the state of every partition whose outputs are committed, in the background
        (``wait``: and wait for it, as a revoke and a stop do). A save still running from
        before is waited for first when ``wait``, else this one is skipped."""
        if self.snapshots is None:
            return
        if self._saving is not None and not self._saving.done():
            if not wait:
                return
            await self._saving
        await self.settle()
        taken = [
            snap
            for p in list(self.processor.states)
            if (snap := self.processor.take_snapshot(p, self.committed)) is not None
        ]
        if taken:
            self._saving = asyncio.create_task(self._save(taken))
        if wait and self._saving is not None:
            saving, self._saving = self._saving, None
            await saving

    async def _save(self, taken: list[PendingSnapshot]) -> None:
        store = self.snapshots
        assert store is not None
        started = time.perf_counter()
        for snap in taken:
            try:
                wanted = {tp: o - 1 for tp, o in snap.offsets.items() if o > 0}
                checks = await asyncio.to_thread(record_checks, self.bootstrap, wanted)
                saved = await asyncio.to_thread(
                    store.save,
                    snap.partition,
                    snap.offsets,
                    {(t, p): checks.get((t, p)) for (t, p) in snap.offsets},
                    snap.states,
                    snap.replace,
                    snap.expected,
                )
            except Exception as exc:  # the database or broker is away: the next save retries
                log.warning("stream.snapshot_failed", partition=snap.partition, error=repr(exc))
                self.processor.unsaved(snap)
                continue
            if saved:
                self.processor.saved(snap)
            else:
                log.warning("stream.snapshot_refused", partition=snap.partition)
                self.processor.unsaved(snap)
        log.info(
            "stream.snapshot",
            partitions=len(taken),
            supporters=sum(len(s.states) for s in taken),
            seconds=round(time.perf_counter() - started, 3),
        )

    async def load_snapshots(
        self, partitions: set[int], committed: dict[tuple[str, int], int]
    ) -> tuple[
        dict[int, tuple[dict[tuple[str, int], int], dict[str, SupporterState]]],
        dict[int, dict[tuple[str, int], int]],
    ]:
        """The saved states of ``partitions`` that can be loaded: at or below the committed
        offsets, and over the same log (the record before each offset is the one saved);
        and the saved offsets of those that cannot."""
        if self.snapshots is None or not partitions:
            return {}, {}
        store = self.snapshots
        saved = await asyncio.to_thread(store.offsets, partitions)
        rejected: dict[int, dict[tuple[str, int], int]] = {}
        usable = {}
        for p, snap in saved.items():
            if any(offset > committed.get(tp, 0) for tp, offset in snap.offsets.items()):
                log.warning("stream.snapshot_rejected", partition=p, reason="ahead of commits")
                rejected[p] = snap.offsets
            else:
                usable[p] = snap
        wanted = {tp: o - 1 for snap in usable.values() for tp, o in snap.offsets.items() if o > 0}
        checks = await asyncio.to_thread(record_checks, self.bootstrap, wanted)
        loaded = {}
        for p, snap in usable.items():
            if any(checks.get(tp) != snap.checks.get(tp) for tp in snap.offsets if tp in wanted):
                log.warning("stream.snapshot_rejected", partition=p, reason="another log")
                rejected[p] = snap.offsets
                continue
            encoded = await asyncio.to_thread(store.states, p)
            loaded[p] = (snap.offsets, {sid: decode_state(data) for sid, data in encoded.items()})
        return loaded, rejected
