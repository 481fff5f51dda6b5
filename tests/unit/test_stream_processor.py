"""EngagementProcessor without a broker: records out, dead letters, and restore by replay."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import TopicPartition

from schemas.events import (
    DeadLetter,
    EngagementScored,
    Event,
    EventAttended,
    NudgeRequested,
    PetitionSigned,
    SupporterSignup,
    TaskCreated,
)
from streams.worker import EngagementProcessor, StreamWorker

SID = "sup_" + "9" * 32
T0 = datetime(2025, 6, 1, 19, 0, tzinfo=UTC)
MODELS = {m.topic: m for m in (EngagementScored, NudgeRequested, TaskCreated, DeadLetter)}


@dataclass(frozen=True)
class Message:
    """The parts of an aiokafka ConsumerRecord the processor reads."""

    offset: int
    key: bytes | None
    value: bytes | None


def msg(offset: int, event: Event) -> Message:
    return Message(offset, event.key().encode(), event.model_dump_json().encode())


def signup(hours: float = 0) -> SupporterSignup:
    return SupporterSignup(
        event_time=T0 + timedelta(hours=hours), supporter_id=SID, email="jo@example.org"
    )


def attended(hours: float = 0) -> EventAttended:
    return EventAttended(
        event_time=T0 + timedelta(hours=hours),
        supporter_id=SID,
        email="jo@example.org",
        meeting_id="m-1",
    )


def petition(hours: float = 0) -> PetitionSigned:
    return PetitionSigned(
        event_time=T0 + timedelta(hours=hours),
        supporter_id=SID,
        email="jo@example.org",
        petition_id="p-1",
    )


def decode(records: list[tuple[str, bytes, bytes]]) -> list[Any]:
    out = []
    for topic, key, value in records:
        parsed = MODELS[topic].model_validate_json(value)
        assert key.decode() == parsed.key()
        out.append(parsed)
    return out


def rules(records: list[tuple[str, bytes, bytes]]) -> list[str]:
    return [
        getattr(o, "nudge_id", None) or o.task_id
        for o in decode(records)
        if isinstance(o, NudgeRequested | TaskCreated)
    ]


def test_live_events_become_records_for_the_output_topics() -> None:
    processor = EngagementProcessor(90.0)
    event = attended()

    records = processor.process("event.attended", 0, [msg(0, event)])

    assert [t for t, _, _ in records] == ["engagement.scored", "nudge.requested", "task.created"]
    assert rules(records) == [f"first-meeting-thanks:{SID}", f"first-meeting-follow-up:{SID}"]
    assert all(o.cause_event_id == event.event_id for o in decode(records))


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (b"{not json", "ValidationError"),
        (b"", "ValidationError"),
        (None, "Error"),
        (json.dumps({"event_time": T0.isoformat(), "email": "x@y.org"}).encode(), "meeting_id"),
        (signup().model_dump_json().encode(), "type"),
    ],
    ids=["not-json", "empty", "tombstone", "missing-fields", "wrong-topic"],
)
def test_a_bad_value_becomes_a_dead_letter_and_its_neighbours_go_on(
    value: bytes | None, error: str
) -> None:
    processor = EngagementProcessor(90.0)
    good = attended()

    records = processor.process("event.attended", 3, [Message(41, b"k-bad", value), msg(42, good)])

    letter, *rest = decode(records)
    assert isinstance(letter, DeadLetter)
    assert (letter.source_topic, letter.partition, letter.offset, letter.source_key) == (
        "event.attended",
        3,
        41,
        "k-bad",
    )
    assert error in letter.error
    assert letter.payload == (value or b"").decode()
    assert letter.consumer == "stream"
    assert [type(o) for o in rest] == [EngagementScored, NudgeRequested, TaskCreated]


def test_replay_up_to_the_committed_offset_restores_state_without_emitting() -> None:
    processor = EngagementProcessor(90.0)
    first, second = attended(), attended(48)
    processor.reset([("event.attended", 0)], {("event.attended", 0): 1})

    records = processor.process("event.attended", 0, [msg(0, first), msg(1, second)])

    outputs = decode(records)
    assert [type(o) for o in outputs] == [EngagementScored]  # no second first-meeting task
    assert outputs[0].cause_event_id == second.event_id
    assert outputs[0].rung == "attendee"


def test_a_redelivered_event_after_the_restore_point_causes_nothing() -> None:
    processor = EngagementProcessor(90.0)
    event = attended()
    processor.reset([("event.attended", 0)], {("event.attended", 0): 1})

    assert processor.process("event.attended", 0, [msg(0, event), msg(1, event)]) == []


def test_a_bad_value_before_the_restore_point_is_not_dead_lettered_again() -> None:
    processor = EngagementProcessor(90.0)
    processor.reset([("event.attended", 0)], {("event.attended", 0): 1})

    assert processor.process("event.attended", 0, [Message(0, None, b"junk")]) == []


def test_co_partitioned_state_is_shared_across_input_topics() -> None:
    """State is per partition number, so a petition on petition.signed partition 2 sees the
    meeting replayed from event.attended partition 2."""
    processor = EngagementProcessor(90.0)
    committed = {("event.attended", 2): 1, ("petition.signed", 2): 0}
    processor.reset(committed, committed)

    assert processor.process("event.attended", 2, [msg(0, attended())]) == []
    records = processor.process("petition.signed", 2, [msg(0, petition(5))])

    assert rules(records) == []  # attended before: no SMS invite
    assert [type(o) for o in decode(records)] == [EngagementScored]


def test_reset_forgets_the_previous_assignment() -> None:
    processor = EngagementProcessor(90.0)
    processor.process("event.attended", 0, [msg(0, attended())])
    processor.reset([("event.attended", 0)], {})

    records = processor.process("petition.signed", 0, [msg(0, petition(1))])

    assert rules(records) == [f"invite-signer:{SID}"]


class FakeBatch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []

    def append(self, key: bytes, value: bytes, timestamp: int | None) -> object:
        self.records.append((key, value))
        return object()  # metadata: there was room

    def close(self) -> None:
        pass


class FakeProducer:
    """The AIOKafkaProducer calls the worker makes: ``send`` and ``create_batch``/``send_batch``,
    each a coroutine returning the future of the acknowledgement (here already acked)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.partitions: list[int | None] = []

    @staticmethod
    def _acked() -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def send(
        self, topic: str, value: bytes, key: bytes, partition: int | None = None
    ) -> asyncio.Future[None]:
        self.sent.append((topic, key, value))
        self.partitions.append(partition)
        return self._acked()

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(
        self, batch: FakeBatch, topic: str, partition: int
    ) -> asyncio.Future[None]:
        for key, value in batch.records:
            self.sent.append((topic, key, value))
            self.partitions.append(partition)
        return self._acked()


class _Everything:
    def __contains__(self, item: object) -> bool:
        return True


class FakeConsumer:
    """AIOKafkaConsumer's commit and assignment; assigned everything unless told otherwise."""

    def __init__(self, assigned: set[TopicPartition] | None = None) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.assigned = assigned

    def assignment(self) -> Any:
        return _Everything() if self.assigned is None else self.assigned

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


async def handle(worker: StreamWorker, batches: dict[TopicPartition, list[Message]]) -> None:
    """One pass of the worker's loop body, then wait for its outputs and commit to settle."""
    await worker._handle(batches)
    await worker.settle()


@pytest.mark.parametrize(("co_partitioned", "partition"), [(True, 1), (False, None)])
def test_the_worker_publishes_then_commits_past_each_batch(
    co_partitioned: bool, partition: int | None
) -> None:
    worker = StreamWorker("unused:9092", 90.0)
    worker.producer, worker.consumer = FakeProducer(), FakeConsumer()  # type: ignore[assignment]
    worker.co_partitioned = co_partitioned
    batches = {TopicPartition("event.attended", 1): [msg(7, attended()), msg(8, attended(2))]}

    asyncio.run(handle(worker, batches))

    assert [t for t, _, _ in worker.producer.sent].count("engagement.scored") == 2
    assert set(worker.producer.partitions) == {partition}  # co-partitioned: the input's
    assert worker.consumer.commits == [{TopicPartition("event.attended", 1): 9}]
    assert worker.processed == 2


def test_live_records_wait_for_the_replay_of_every_co_partitioned_topic() -> None:
    worker = StreamWorker("unused:9092", 90.0)
    worker.producer, worker.consumer = FakeProducer(), FakeConsumer()  # type: ignore[assignment]
    committed = {("event.attended", 0): 1, ("petition.signed", 0): 0}
    worker.processor.reset(committed, committed)  # what the rebalance listener does
    # One getmany returns both partitions; the live petition's comes first.
    batches = {
        TopicPartition("petition.signed", 0): [msg(0, petition(5))],
        TopicPartition("event.attended", 0): [msg(0, attended())],
    }

    asyncio.run(handle(worker, batches))

    assert rules(worker.producer.sent) == []  # attended before the restart: no SMS invite
    assert [t for t, _, _ in worker.producer.sent] == ["engagement.scored"]
    assert worker.consumer.commits == [
        {TopicPartition("event.attended", 0): 1, TopicPartition("petition.signed", 0): 1}
    ]


def test_live_records_are_held_across_batches_until_the_replay_is_done() -> None:
    processor = EngagementProcessor(90.0)
    committed = {("event.attended", 0): 2, ("petition.signed", 0): 0}
    processor.reset(committed, committed)

    # The live petition arrives before the rest of the replay of event.attended.
    assert processor.process("event.attended", 0, [msg(0, signup())]) == []
    assert processor.process("petition.signed", 0, [msg(0, petition(5))]) == []
    released = processor.process("event.attended", 0, [msg(1, attended()), msg(2, attended(9))])

    outputs = decode(released)
    assert rules(released) == []  # neither an invite nor a second first-meeting task
    assert [type(o) for o in outputs] == [EngagementScored, EngagementScored]
    assert processor.done == {("event.attended", 0): 3, ("petition.signed", 0): 1}


def test_other_partitions_do_not_wait_for_a_replay() -> None:
    processor = EngagementProcessor(90.0)
    committed = {("event.attended", 0): 5, ("petition.signed", 1): 0}
    processor.reset(committed, committed)

    records = processor.process("petition.signed", 1, [msg(0, petition())])

    assert rules(records) == [f"invite-signer:{SID}"]


def test_offsets_of_partitions_lost_in_a_rebalance_are_not_committed() -> None:
    kept, lost = TopicPartition("event.attended", 0), TopicPartition("event.attended", 1)
    worker = StreamWorker("unused:9092", 90.0)
    consumer = FakeConsumer(assigned={kept})
    worker.producer, worker.consumer = FakeProducer(), consumer  # type: ignore[assignment]
    batches = {kept: [msg(3, attended())], lost: [msg(5, attended(2))]}

    asyncio.run(handle(worker, batches))

    assert consumer.commits == [{kept: 4}]
