"""The stream worker against the embedded broker: outputs, dead letters, restart by replay,
and what its clock says time has caused.

The catalogue's topic names are fixed, so tests share the session's topics: each uses fresh
supporter ids and a fresh consumer group, and looks only at its own supporters' records.
Consent arrives on another topic than the actions that need it: the worker folds a
supporter's records in arrival order across topics (streams.engagement.fold_order), whatever
order it fetches the topics in, so a meeting produced right after the signup is thanked.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from infra.broker import EmbeddedBroker
from infra.kafka import ConsumerSettings, ledger_producer
from infra.topics import admin_client
from schemas.events import Event, EventAttended, PetitionSigned, SupporterSignup
from streams.engagement import Engine
from streams.playbook import load_playbook
from streams.scoring import DAY_S
from streams.worker import StreamWorker
from tests.integration.running import Running
from tests.polling import wait_until

OUTPUT_TOPICS = (
    "engagement.scored",
    "ladder.changed",
    "nudge.requested",
    "task.created",
    "deadletter",
)
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
"""Two days ago: events an hour or so around it arrive within their rules' 72 hours."""
DEADLINE_S = 60.0
SHORT_JOIN = ConsumerSettings(session_timeout_ms=6_000)
"""Tansu answers a first JoinGroup after half the session timeout, and a worker that was the
first member of a new group (generation 0) does not send LeaveGroup when it stops, so its
successor waits out the session too. The broker's minimum session timeout keeps that short."""


def new_sid() -> str:
    return f"sup_{uuid.uuid4().hex}"


def signup(sid: str, hours: float = 0, **fields: Any) -> SupporterSignup:
    """A signup consenting to email and SMS."""
    return SupporterSignup(
        event_time=T0 + timedelta(hours=hours),
        supporter_id=sid,
        email="x@example.org",
        consent_email=True,
        consent_sms=True,
        **fields,
    )


def petition(sid: str, hours: float = 0) -> PetitionSigned:
    return PetitionSigned(
        event_time=T0 + timedelta(hours=hours),
        supporter_id=sid,
        email="x@example.org",
        petition_id="clean-air",
        petition_title="Clean air",
    )


def attended(sid: str, hours: float = 0) -> EventAttended:
    return EventAttended(
        event_time=T0 + timedelta(hours=hours),
        supporter_id=sid,
        email="x@example.org",
        meeting_id="m-1",
        meeting_title="Housing night",
    )


class Producer:
    """The relay's producer; each record is sent and acknowledged alone, so its offset is exact
    (Tansu reports wrong end offsets for multi-record batches, so we never ask for those)."""

    def __init__(self, bootstrap: str) -> None:
        self.producer = ledger_producer(bootstrap)
        self.last: dict[TopicPartition, int] = {}

    def send(self, topic: str, key: bytes, value: bytes, partition: int | None = None) -> Any:
        meta = self.producer.send(topic, key=key, value=value, partition=partition).get(30)
        tp = TopicPartition(meta.topic, meta.partition)
        self.last[tp] = max(self.last.get(tp, -1), meta.offset)
        return meta

    def event(self, event: Event) -> Any:
        return self.send(event.topic, event.key().encode(), event.model_dump_json().encode())

    def close(self) -> None:
        self.producer.close(timeout=5)


class Outputs:
    """Reads the output topics from the beginning without a group; keeps this test's records."""

    def __init__(self, bootstrap: str, keep: Callable[[str, dict[str, Any]], bool]) -> None:
        self.keep = keep
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self.tps = [
            TopicPartition(topic, p)
            for topic in OUTPUT_TOPICS
            for p in sorted(self.consumer.partitions_for_topic(topic) or ())
        ]
        self.consumer.assign(self.tps)
        self.consumer.seek_to_beginning(*self.tps)
        self.records: list[tuple[str, dict[str, Any]]] = []

    def poll(self) -> None:
        for tp, messages in self.consumer.poll(timeout_ms=100, max_records=10_000).items():
            for m in messages:
                try:
                    value = json.loads(m.value)
                except ValueError:
                    continue  # another test's deliberately bad record on a shared topic
                if self.keep(tp.topic, value):
                    self.records.append((tp.topic, value))

    def wait_for(
        self, what: str, check: Callable[[list[tuple[str, dict[str, Any]]]], bool]
    ) -> None:
        def seen() -> bool:
            if check(self.records):
                return True
            self.poll()
            return False

        wait_until(what, seen, DEADLINE_S, 0, lambda: f"have {self.records}")

    def drain(self) -> None:
        """Read up to each partition's high watermark (taken from fetch responses)."""
        marks: dict[TopicPartition, int | None] = {}

        def at_the_end() -> bool:
            self.poll()
            marks.update({tp: self.consumer.highwater(tp) for tp in self.tps})
            return all(
                mark is not None and self.consumer.position(tp) >= mark
                for tp, mark in marks.items()
            )

        wait_until("reading to the end", at_the_end, DEADLINE_S, 0, lambda: marks)

    def of(self, topic: str) -> list[dict[str, Any]]:
        return [v for t, v in self.records if t == topic]

    def close(self) -> None:
        self.consumer.close()


def window(cooldown_days: int, event: Event) -> int:
    """The cooldown window of a rule firing for ``event``: part of its idempotency key."""
    return (int(event.event_time.timestamp()) - 946_684_800) // (cooldown_days * DAY_S)


class RunningWorker(Running[StreamWorker]):
    """A StreamWorker with the default playbook, run in a thread; stop() ends it."""

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        clock: Callable[[], float] = time.time,
        tick_seconds: float = 60.0,
    ) -> None:
        super().__init__(
            StreamWorker(
                bootstrap,
                Engine(load_playbook()),
                group_id=group_id,
                clock=clock,
                tick_seconds=tick_seconds,
                consumer_settings=SHORT_JOIN,
            )
        )


def wait_committed(bootstrap: str, group_id: str, produced: dict[TopicPartition, int]) -> None:
    """Until the group has committed past every record produced (so its outputs are acked)."""
    admin = admin_client(bootstrap)
    behind: dict[TopicPartition, tuple[int | None, int]] = {}

    def caught_up() -> bool:
        committed = admin.list_group_offsets(group_id).get(group_id, {})
        behind.clear()
        behind.update(
            {
                tp: (committed[tp].offset if tp in committed else None, last + 1)
                for tp, last in produced.items()
                if tp not in committed or committed[tp].offset <= last
            }
        )
        return not behind

    try:
        wait_until(f"group {group_id} to commit", caught_up, DEADLINE_S, 0.1, lambda: behind)
    finally:
        admin.close()


@pytest.fixture
def producer(broker: EmbeddedBroker) -> Iterator[Producer]:
    p = Producer(broker.bootstrap)
    yield p
    p.close()


@pytest.fixture
def workers(broker: EmbeddedBroker) -> Iterator[Callable[..., RunningWorker]]:
    started: list[RunningWorker] = []

    def start(group_id: str, **options: Any) -> RunningWorker:
        running = RunningWorker(broker.bootstrap, group_id, **options)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def keyed(ids: set[str]) -> Callable[[str, dict[str, Any]], bool]:
    def keep(topic: str, value: dict[str, Any]) -> bool:
        if topic == "deadletter":
            return value.get("source_key") in ids
        return value.get("supporter_id") in ids

    return keep


def key_of(value: dict[str, Any]) -> str:
    return value.get("nudge_id") or value.get("task_id") or value["event_id"]


def scored_causes(outputs: Outputs) -> set[str]:
    return {v["cause_event_id"] for v in outputs.of("engagement.scored")}


def produce_and_wait_scored(producer: Producer, outputs: Outputs, events: Sequence[Event]) -> None:
    for event in events:
        producer.event(event)
    outputs.wait_for(
        "their scores", lambda r: {str(e.event_id) for e in events} <= scored_causes(outputs)
    )


def test_the_worker_scores_nudges_tasks_and_dead_letters(
    broker: EmbeddedBroker,
    producer: Producer,
    workers: Callable[..., RunningWorker],
    group_id: str,
) -> None:
    joiner, member, signer, neighbour = (new_sid() for _ in range(4))
    outputs = Outputs(broker.bootstrap, keyed({joiner, member, signer, neighbour}))
    try:
        workers(group_id)
        join = signup(joiner, area="Hackney")
        joins = [join, *(signup(sid) for sid in (member, signer, neighbour))]
        produce_and_wait_scored(producer, outputs, joins)  # consent before what needs it
        meeting = attended(member)
        signature = petition(signer)
        producer.event(meeting)
        producer.event(signature)
        # A malformed value, then a valid event beside it on the same partition (same key).
        bad = producer.send("event.attended", neighbour.encode(), b"{not json")
        beside = attended(neighbour)
        beside_meta = producer.event(beside)
        assert (beside_meta.partition, beside_meta.offset) == (bad.partition, bad.offset + 1)
        wrong = producer.send("petition.signed", neighbour.encode(), b'{"event_time": "x"}')

        outputs.wait_for(
            "every output",
            lambda r: (
                len(outputs.of("engagement.scored")) >= 7
                and len(outputs.of("ladder.changed")) >= 3
                and len(outputs.of("nudge.requested")) >= 7
                and len(outputs.of("task.created")) >= 2
                and len(outputs.of("deadletter")) >= 2
            ),
        )
    finally:
        outputs.close()

    scored = {v["cause_event_id"]: v for v in outputs.of("engagement.scored")}
    assert set(scored) == {str(e.event_id) for e in (*joins, meeting, signature, beside)}
    assert scored[str(meeting.event_id)]["rung"] == "attendee"
    assert scored[str(signature.event_id)]["rung"] == "signer"
    assert scored[str(join.event_id)]["score"] == 1.0
    ladder = {
        (v["supporter_id"], v["previous_rung"], v["rung"], v["direction"])
        for v in outputs.of("ladder.changed")
    }
    assert ladder == {
        (member, "supporter", "attendee", "up"),
        (signer, "supporter", "signer", "up"),
        (neighbour, "supporter", "attendee", "up"),
    }
    nudges = {(v["nudge_id"], v["channel"], v["template"]) for v in outputs.of("nudge.requested")}
    assert nudges == {
        *((f"welcome:{sid}", "email", "welcome") for sid in (joiner, member, signer, neighbour)),
        (f"first-meeting-thanks:{member}", "email", "thanks_first_meeting"),
        (f"invite-signer:{signer}:{window(30, signature)}", "sms", "invite_next_meeting"),
        (f"first-meeting-thanks:{neighbour}", "email", "thanks_first_meeting"),
    }
    welcome = next(v for v in outputs.of("nudge.requested") if v["supporter_id"] == joiner)
    assert welcome["context"] == {"area": "Hackney"}
    tasks = {v["task_id"]: v for v in outputs.of("task.created")}
    assert set(tasks) == {
        f"first-meeting-follow-up:{member}",
        f"first-meeting-follow-up:{neighbour}",
    }
    due = datetime.fromisoformat(tasks[f"first-meeting-follow-up:{member}"]["due_at"])
    assert due == meeting.event_time + timedelta(hours=48)
    assert tasks[f"first-meeting-follow-up:{member}"]["priority"] == "high"
    letters = {
        (v["source_topic"], v["partition"], v["offset"]): v for v in outputs.of("deadletter")
    }
    assert set(letters) == {
        ("event.attended", bad.partition, bad.offset),
        ("petition.signed", wrong.partition, wrong.offset),
    }
    malformed = letters[("event.attended", bad.partition, bad.offset)]
    assert malformed["payload"] == "{not json"
    assert "ValidationError" in malformed["error"] and "Invalid JSON" in malformed["error"]
    assert malformed["consumer"] == "stream"
    invalid = letters[("petition.signed", wrong.partition, wrong.offset)]
    assert "supporter_id" in invalid["error"] and "petition_id" in invalid["error"]


def test_records_on_different_topics_fold_in_the_order_they_reached_the_log(
    broker: EmbeddedBroker,
    producer: Producer,
    workers: Callable[..., RunningWorker],
    group_id: str,
) -> None:
    """Without waiting in between: a signup then a meeting gets the first-meeting thanks (the
    signup's consent is folded first); a meeting then a signup does not, however the worker
    happens to fetch the two topics."""
    thanked = [new_sid() for _ in range(4)]
    unthanked = [new_sid() for _ in range(4)]
    outputs = Outputs(broker.bootstrap, keyed({*thanked, *unthanked}))
    try:
        workers(group_id)
        events: list[Event] = []
        for sid in thanked:
            events += [signup(sid, -1), attended(sid)]
        for sid in unthanked:
            events += [attended(sid), signup(sid, -1)]  # the meeting reached the log first
        for event in events:
            producer.event(event)
        outputs.wait_for(
            "every score", lambda r: {str(e.event_id) for e in events} <= scored_causes(outputs)
        )
        wait_committed(broker.bootstrap, group_id, producer.last)
        outputs.drain()
    finally:
        outputs.close()

    nudges = {v["nudge_id"] for v in outputs.of("nudge.requested")}
    assert nudges == {
        *(f"welcome:{sid}" for sid in [*thanked, *unthanked]),
        *(f"first-meeting-thanks:{sid}" for sid in thanked),
    }
    assert {v["task_id"] for v in outputs.of("task.created")} == {
        f"first-meeting-follow-up:{sid}" for sid in [*thanked, *unthanked]
    }
    first_scores: dict[str, dict[str, Any]] = {}
    for v in outputs.of("engagement.scored"):
        first_scores.setdefault(v["supporter_id"], v)
    assert {sid: first_scores[sid]["rung"] for sid in unthanked} == dict.fromkeys(
        unthanked, "attendee"
    )  # the meeting was folded first


def test_an_event_from_the_future_is_dead_lettered(
    broker: EmbeddedBroker,
    producer: Producer,
    workers: Callable[..., RunningWorker],
    group_id: str,
) -> None:
    sid = new_sid()
    outputs = Outputs(broker.bootstrap, keyed({sid}))
    try:
        future = attended(sid, 24 * 4)  # T0 is two days ago: two days ahead of its arrival
        meta = producer.event(future)
        workers(group_id)
        outputs.wait_for("the dead letter", lambda r: len(outputs.of("deadletter")) >= 1)
    finally:
        outputs.close()

    (letter,) = outputs.of("deadletter")
    assert (letter["source_topic"], letter["partition"], letter["offset"]) == (
        "event.attended",
        meta.partition,
        meta.offset,
    )
    assert letter["error"].startswith("FutureEvent: event_time is ")
    assert letter["error"].endswith(" h after the event arrived (tolerance 24 h)")
    assert outputs.of("engagement.scored") == []


def test_a_restarted_worker_restores_state_by_replay_and_repeats_nothing(
    broker: EmbeddedBroker,
    producer: Producer,
    workers: Callable[..., RunningWorker],
    group_id: str,
) -> None:
    regular, member, newcomer = new_sid(), new_sid(), new_sid()
    outputs = Outputs(broker.bootstrap, keyed({regular, member, newcomer}))
    try:
        first = workers(group_id)
        joins = [signup(regular, -10), signup(newcomer, -10)]  # member never signed up
        produce_and_wait_scored(producer, outputs, joins)
        meetings = [attended(regular), attended(member)]
        for meeting in meetings:
            producer.event(meeting)
        outputs.wait_for("the first run's outputs", lambda r: len(outputs.of("task.created")) == 2)
        wait_committed(broker.bootstrap, group_id, producer.last)
        first.stop()
        emitted_before = {key_of(v) for _, v in outputs.records}

        # Produced while no worker runs: the new worker meets them beside its replay.
        signature = petition(newcomer, 30)
        after: list[Event] = [
            petition(regular, 24),  # attended before the restart: no SMS invite
            attended(regular, 48),  # a second meeting: no first-meeting thanks or task
            signup(regular, 50),  # a second signup: no second welcome
            petition(member, 30),  # attended, and no consent anyway
            signature,  # never attended: the invite proves the worker is live
        ]
        for event in after:
            producer.event(event)
        producer.event(meetings[0])  # a redelivery of a committed event: causes nothing
        workers(group_id)
        outputs.wait_for(
            "the second run's scores",
            lambda r: {str(e.event_id) for e in after} <= scored_causes(outputs),
        )
        wait_committed(broker.bootstrap, group_id, producer.last)
        outputs.drain()
    finally:
        outputs.close()

    keys = [key_of(v) for _, v in outputs.records]
    assert len(keys) == len(set(keys)), "an output was emitted twice"
    assert emitted_before <= set(keys)
    causes = [v["cause_event_id"] for v in outputs.of("engagement.scored")]
    assert sorted(causes) == sorted(str(e.event_id) for e in [*joins, *meetings, *after])
    assert {v["nudge_id"] for v in outputs.of("nudge.requested")} == {
        f"welcome:{regular}",
        f"welcome:{newcomer}",
        f"first-meeting-thanks:{regular}",
        f"invite-signer:{newcomer}:{window(30, signature)}",
    }
    assert {v["task_id"] for v in outputs.of("task.created")} == {
        f"first-meeting-follow-up:{regular}",
        f"first-meeting-follow-up:{member}",
    }
    second_meeting = next(
        v for v in outputs.of("engagement.scored") if v["cause_event_id"] == str(after[1].event_id)
    )
    assert second_meeting["previous_rung"] == "attendee"  # the first meeting was restored
    assert outputs.of("deadletter") == []


def test_the_worker_clock_fires_lapse_rules_once_and_lowers_rungs(
    broker: EmbeddedBroker,
    producer: Producer,
    workers: Callable[..., RunningWorker],
    group_id: str,
) -> None:
    sid = new_sid()
    outputs = Outputs(broker.bootstrap, keyed({sid}))
    ahead = [0.0]  # how far the worker's clock is ahead of real time, in seconds
    ticks = [0]

    def clock() -> float:
        ticks[0] += 1
        return time.time() + ahead[0]

    try:
        workers(group_id, clock=clock, tick_seconds=0.1)
        produce_and_wait_scored(producer, outputs, [signup(sid, 0)])
        meetings = [attended(sid, hours) for hours in (1, 25, 49)]  # three days: a regular
        produce_and_wait_scored(producer, outputs, meetings)
        third = str(meetings[-1].event_id)
        assert [
            v["rung"] for v in outputs.of("engagement.scored") if v["cause_event_id"] == third
        ] == ["regular"]

        ahead[0] = 100 * DAY_S  # quiet for 100 days: a lapse, and the meetings out of window
        outputs.wait_for(
            "the lapse outputs",
            lambda r: (
                len(outputs.of("nudge.requested")) >= 2
                and len(outputs.of("task.created")) >= 2
                and len(outputs.of("ladder.changed")) >= 2
            ),
        )
        seen = ticks[0]

        def ticked_ten_more() -> bool:  # ten more ticks: nothing more may come of them
            if ticks[0] >= seen + 10:
                return True
            outputs.poll()
            return False

        wait_until("ten more ticks of the worker's clock", ticked_ten_more, DEADLINE_S, 0)
        outputs.drain()
    finally:
        outputs.close()

    spell = int(meetings[-1].event_time.timestamp()) - 946_684_800
    assert {v["nudge_id"] for v in outputs.of("nudge.requested")} == {
        f"welcome:{sid}",
        f"first-meeting-thanks:{sid}",
        f"re-engage-lapsing-regular:{sid}:quiet-since-{spell}",
    }
    assert {v["task_id"] for v in outputs.of("task.created")} == {
        f"first-meeting-follow-up:{sid}",
        f"one-to-one-new-regular:{sid}:{window(180, meetings[-1])}",
        f"check-in-lapsing-regular:{sid}:quiet-since-{spell}",
    }
    assert len(outputs.of("nudge.requested")) == 3
    assert len(outputs.of("task.created")) == 3
    moves = [(v["previous_rung"], v["rung"], v["direction"]) for v in outputs.of("ladder.changed")]
    assert moves == [
        ("supporter", "attendee", "up"),
        ("attendee", "regular", "up"),
        ("regular", "attendee", "down"),
    ]
    down = outputs.of("ladder.changed")[-1]
    assert down["cause_event_id"] is None


def test_workers_in_one_group_each_own_whole_partition_numbers(
    workers: Callable[..., RunningWorker],
) -> None:
    """A supporter's state is the fold over all input topics, so partition p of every input
    topic must belong to the same worker. Three workers over two partitions a topic: aiokafka's
    default (round-robin) hands (topic, p) pairs out in turn and splits them."""
    from schemas.catalogue import INPUT_TOPICS

    group = f"three-workers-{uuid.uuid4().hex[:8]}"
    running = [workers(group) for _ in range(3)]

    def assignments() -> list[set[TopicPartition]] | None:
        owned = [
            set(w.worker.consumer.assignment()) if hasattr(w.worker, "consumer") else set()
            for w in running
        ]
        union = set().union(*owned)
        complete = len(union) == len(INPUT_TOPICS) * 2 and sum(map(len, owned)) == len(union)
        return owned if complete else None

    owned = wait_until("the workers to share out the partitions", assignments, DEADLINE_S, 0.2)
    for tps in owned:
        numbers = {
            topic: {tp.partition for tp in tps if tp.topic == topic} for topic in INPUT_TOPICS
        }
        assert len({frozenset(p) for p in numbers.values()}) == 1, numbers
