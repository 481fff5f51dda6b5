"""The score read model on SQLite and PostgreSQL, and the consumer worker that feeds it from the
embedded broker: newest score by event time wins, bad records are dead-lettered, held-out
nudges and tasks are recorded but neither sent nor queued.

The catalogue's topic names are fixed, so the worker tests share the session's topics: each uses
fresh supporter ids and a fresh consumer group, and looks only at its own supporters' rows.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import TopicPartition as AioTopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from consumers.dispatch import Dispatcher
from consumers.rendering import TemplateBook
from consumers.repository import (
    list_tasks,
    store_scores,
    supporter_score,
    top_scores,
    unstorable_score,
)
from consumers.runner import ConsumerWorker, parse_batch
from infra.broker import EmbeddedBroker
from infra.db import Nudge, OutboxMessage
from infra.kafka import ConsumerSettings, ledger_producer
from schemas.events import EngagementScored, Event, NudgeRequested, TaskCreated
from streams.engagement import SupporterState
from streams.replay import final_scores
from tests.factories import add_supporter, nudge_request
from tests.integration.running import DispatchRounds, Running
from tests.polling import wait_until
from tests.unit.engine_events import attended, default_engine, no_show, petition, rsvp, signup

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def new_sid() -> str:
    return f"sup_{uuid.uuid4().hex}"


def scored(sid: str, hours: float, score: float, rung: str = "supporter") -> EngagementScored:
    return EngagementScored(
        event_time=T0 + timedelta(hours=hours),
        supporter_id=sid,
        score=score,
        rung=rung,
        cause_event_id=uuid.uuid4(),
        half_life_days=90.0,
    )


def stored(sessions: sessionmaker[Session], sid: str) -> tuple[float, str, str] | None:
    """(score, rung, as_of) as the read model has them, or None."""
    with sessions() as session:
        row = supporter_score(session, sid)
    return None if row is None else (row["score"], row["rung"], row["as_of"])


def at(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).isoformat()


# --- the repository ---------------------------------------------------------------------------


def test_a_score_is_stored_and_read_back(sessions: sessionmaker[Session]) -> None:
    sid = new_sid()
    event = scored(sid, 1, 12.5, "member")

    with sessions.begin() as session:
        assert store_scores(session, [event]) == 1
    with sessions() as session:
        assert supporter_score(session, sid) == {
            "supporter_id": sid,
            "score": 12.5,
            "rung": "member",
            "as_of": at(1),
            "cause_event_id": str(event.cause_event_id),
        }
        assert supporter_score(session, new_sid()) is None
    with sessions.begin() as session:
        assert store_scores(session, []) == 0


def test_an_older_score_arriving_later_does_not_overwrite_a_newer_one(
    sessions: sessionmaker[Session],
) -> None:
    sid = new_sid()
    with sessions.begin() as session:
        assert store_scores(session, [scored(sid, 5, 30.0, "regular")]) == 1
    with sessions.begin() as session:  # late, out of order: written nowhere
        assert store_scores(session, [scored(sid, 2, 10.0, "member")]) == 0
    assert stored(sessions, sid) == (30.0, "regular", at(5))

    with sessions.begin() as session:  # newer: replaces it
        assert store_scores(session, [scored(sid, 6, 31.0, "leader_candidate")]) == 1
    assert stored(sessions, sid) == (31.0, "leader_candidate", at(6))


def test_within_one_batch_the_newest_by_event_time_wins_whatever_the_order(
    sessions: sessionmaker[Session],
) -> None:
    ann, bob = new_sid(), new_sid()
    batch = [
        scored(ann, 3, 3.0),
        scored(bob, 1, 1.0),
        scored(ann, 9, 9.0, "regular"),  # ann's newest, in the middle
        scored(bob, 4, 4.0, "member"),
        scored(ann, 7, 7.0),
    ]

    with sessions.begin() as session:
        assert store_scores(session, batch) == 2  # one row each, one statement
    assert stored(sessions, ann) == (9.0, "regular", at(9))
    assert stored(sessions, bob) == (4.0, "member", at(4))


def test_at_equal_event_times_the_later_write_wins(sessions: sessionmaker[Session]) -> None:
    sid = new_sid()
    with sessions.begin() as session:
        store_scores(session, [scored(sid, 2, 1.0, "first")])
    with sessions.begin() as session:
        assert store_scores(session, [scored(sid, 2, 2.0, "second")]) == 1
    assert stored(sessions, sid) == (2.0, "second", at(2))

    with sessions.begin() as session:  # within a batch: the later in it
        assert store_scores(session, [scored(sid, 2, 3.0, "third"), scored(sid, 2, 4.0)]) == 1
    assert stored(sessions, sid) == (4.0, "supporter", at(2))


def test_a_redelivered_batch_leaves_the_newest_in_place(sessions: sessionmaker[Session]) -> None:
    sid = new_sid()
    old, new = scored(sid, 1, 1.0), scored(sid, 2, 2.0, "member")
    with sessions.begin() as session:
        store_scores(session, [old, new])
    with sessions.begin() as session:
        store_scores(session, [old])
        store_scores(session, [new, old])
    assert stored(sessions, sid) == (2.0, "member", at(2))


def test_top_scores_lists_the_highest_first(sessions: sessionmaker[Session]) -> None:
    sids = sorted(new_sid() for _ in range(5))
    values = [4.0, 9.5, 0.0, 9.5, 7.25]
    with sessions.begin() as session:
        store_scores(session, [scored(s, 1, v) for s, v in zip(sids, values, strict=True)])
        store_scores(session, [scored(sids[2], 0, 100.0)])  # older: must not count

    with sessions() as session:
        top = top_scores(session, 3)
        everyone = top_scores(session, 10)
    assert [(r["supporter_id"], r["score"]) for r in top] == [
        (sids[1], 9.5),  # a tie: by supporter id
        (sids[3], 9.5),
        (sids[4], 7.25),
    ]
    assert [r["score"] for r in everyone] == [9.5, 9.5, 7.25, 4.0, 0.0]


@pytest.mark.parametrize(
    ("score", "rung", "problem"),
    [
        (float("nan"), "member", "not a finite number"),
        (float("inf"), "member", "not a finite number"),
        (1.0, "r" * 101, "longer than 100"),
    ],
    ids=["nan", "infinity", "long-rung"],
)
def test_a_score_the_table_cannot_hold_is_named_unstorable(
    score: float, rung: str, problem: str
) -> None:
    event = scored(new_sid(), 1, 0.0).model_copy(update={"score": score, "rung": rung})
    reason = unstorable_score(event)
    assert reason is not None and problem in reason
    assert unstorable_score(scored(new_sid(), 1, 0.0, "r" * 100)) is None


# --- parsing a poll's records (no broker) -------------------------------------------------------


class _Message:
    def __init__(self, offset: int, value: bytes | None, key: bytes | None = b"k") -> None:
        self.offset, self.value, self.key = offset, value, key


def test_parse_batch_sorts_records_by_topic_and_dead_letters_the_rest() -> None:
    sid = new_sid()
    good = scored(sid, 1, 1.0)
    nan = good.model_dump_json().replace('"score":1.0', '"score":NaN').encode()
    nudge = NudgeRequested(
        event_time=T0,
        nudge_id=f"welcome:{sid}",
        supporter_id=sid,
        channel="email",
        template="welcome",
        rule="welcome",
        cause_event_id=uuid.uuid4(),
    )
    scores_tp = AioTopicPartition(EngagementScored.topic, 1)
    batch = parse_batch(
        {
            scores_tp: [
                _Message(10, b"{not json"),
                _Message(11, good.model_dump_json().encode()),
                _Message(12, nan),
                _Message(13, None, key=None),
            ],
            AioTopicPartition(NudgeRequested.topic, 0): [
                _Message(3, nudge.model_dump_json().encode())
            ],
            AioTopicPartition(TaskCreated.topic, 0): [
                _Message(4, nudge.model_dump_json().encode())
            ],
        }
    )

    assert batch.scores == [good]
    assert batch.nudges == [nudge]
    assert batch.tasks == []
    letters = [json.loads(value) for _, _, value in batch.letters]
    assert {topic for topic, _, _ in batch.letters} == {"deadletter"}
    assert [(v["source_topic"], v["partition"], v["offset"]) for v in letters] == [
        (EngagementScored.topic, 1, 10),
        (EngagementScored.topic, 1, 12),
        (EngagementScored.topic, 1, 13),
        (TaskCreated.topic, 0, 4),
    ]
    assert "finite number" in letters[1]["error"]
    assert letters[0]["payload"] == "{not json" and letters[0]["consumer"] == "consumers"


# --- the consumer worker on the embedded broker -------------------------------------------------


@pytest.fixture
def consumers(
    broker: EmbeddedBroker,
    sessions: sessionmaker[Session],
    group_id: str,
) -> Iterator[Callable[[], Running[ConsumerWorker]]]:
    """Starts the consumer worker (outbox mode) on this test's database and consumer group."""
    short_join = ConsumerSettings(session_timeout_ms=6_000)  # a short first join on Tansu
    started: list[Running[ConsumerWorker]] = []

    def start() -> Running[ConsumerWorker]:
        stage = Dispatcher(sessions, TemplateBook(), {}, "Grassroots Together", "http://x.test")
        running = Running(ConsumerWorker(broker.bootstrap, sessions, stage, group_id, short_join))
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def send(broker: EmbeddedBroker) -> Iterator[Callable[..., Any]]:
    """Produce one record, acknowledged alone: ``send(topic, key, value, partition)``."""
    producer = ledger_producer(broker.bootstrap)

    def send_one(topic: str, key: str, value: bytes, partition: int | None = None) -> Any:
        return producer.send(topic, key=key.encode(), value=value, partition=partition).get(30)

    yield send_one
    producer.close(timeout=5)


def send_event(send: Callable[..., Any], event: Event, partition: int | None = None) -> Any:
    return send(event.topic, event.key(), event.model_dump_json().encode(), partition)


class DeadLetters:
    """Reads the deadletter topic from the beginning without a group, keeping what ``keep``
    accepts (polled, never sized by end offsets: Tansu reports them wrong for batches)."""

    def __init__(self, bootstrap: str, keep: Callable[[dict[str, Any]], bool]) -> None:
        self.keep = keep
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        partitions = self.consumer.partitions_for_topic("deadletter") or set()
        tps = [TopicPartition("deadletter", p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.letters: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        for messages in self.consumer.poll(timeout_ms=100, max_records=10_000).values():
            self.letters += [v for m in messages if self.keep(v := json.loads(m.value))]
        return self.letters

    def close(self) -> None:
        self.consumer.close()


def test_the_worker_keeps_the_newest_score_and_dead_letters_bad_records(
    broker: EmbeddedBroker,
    sessions: sessionmaker[Session],
    consumers: Callable[[], Running[ConsumerWorker]],
    send: Callable[..., Any],
) -> None:
    ann, bob, last = new_sid(), new_sid(), new_sid()
    topic = EngagementScored.topic
    # All on one partition, in this order, so ``last`` stored means the rest were handled.
    send_event(send, scored(ann, 5, 50.0, "regular"), 0)
    bad = send(topic, ann, f"{{not json {ann}".encode(), 0)
    send_event(send, scored(bob, 1, 1.0), 0)
    send_event(send, scored(ann, 2, 20.0, "member"), 0)  # older, arriving later
    nan_value = scored(bob, 9, 0.0).model_dump_json().replace('"score":0.0', '"score":NaN')
    nan = send(topic, bob, nan_value.encode(), 0)
    send_event(send, scored(bob, 3, 3.0, "member"), 0)
    send_event(send, scored(last, 1, 1.0), 0)

    running = consumers()
    wait_until("the last score stored", lambda: stored(sessions, last) is not None)
    ours = {(topic, 0, bad.offset), (topic, 0, nan.offset)}

    def keep(letter: dict[str, Any]) -> bool:
        return (letter["source_topic"], letter["partition"], letter["offset"]) in ours

    reader = DeadLetters(broker.bootstrap, keep)
    try:
        wait_until("two dead letters", lambda: len(reader.poll()) >= 2)
    finally:
        reader.close()
    running.stop()
    letters = reader.letters

    assert stored(sessions, ann) == (50.0, "regular", at(5))
    assert stored(sessions, bob) == (3.0, "member", at(3))  # the NaN at hour 9 never landed
    by_offset = {letter["offset"]: letter for letter in letters}
    assert sorted(by_offset) == sorted((bad.offset, nan.offset))
    assert by_offset[bad.offset]["source_key"] == ann
    assert by_offset[bad.offset]["payload"] == f"{{not json {ann}"
    assert by_offset[bad.offset]["consumer"] == "consumers"
    assert by_offset[nan.offset]["source_key"] == bob
    assert "finite number" in by_offset[nan.offset]["error"]


def test_the_worker_records_held_out_outputs_without_sending_or_queueing_them(
    sessions: sessionmaker[Session],
    consumers: Callable[[], Running[ConsumerWorker]],
    send: Callable[..., Any],
) -> None:
    sid = new_sid()
    with sessions.begin() as session:
        add_supporter(
            session,
            sid,
            email="jo@example.org",
            consent=["email"],
            consented_at=T0 - timedelta(days=1),
        )

    def nudge(rule: str, template: str, holdout: bool) -> NudgeRequested:
        return nudge_request(
            f"{rule}:{sid}", sid, "email", T0, template=template, rule=rule, holdout=holdout
        )

    def task(rule: str, holdout: bool) -> TaskCreated:
        return TaskCreated(
            event_time=T0,
            task_id=f"{rule}:{sid}",
            supporter_id=sid,
            kind="check_in",
            reason="A regular has not been seen for 60 days",
            due_at=T0 + timedelta(days=7),
            rule=rule,
            cause_event_id=uuid.uuid4(),
            priority="high",
            holdout=holdout,
        )

    held_nudge = nudge("re-engage-lapsing-regular", "we_miss_you", holdout=True)
    sent_nudge = nudge("welcome", "welcome", holdout=False)
    held_task, open_task = task("check-in-lapsing-regular", True), task("one-to-one", False)
    # The held-out ones first, on the same partitions (same key): the others handled means these
    # were too.
    for event in (held_nudge, held_task, sent_nudge, open_task):
        send_event(send, event)

    def statuses() -> dict[str, str]:
        with sessions() as session:
            rows = session.scalars(select(Nudge).where(Nudge.supporter_id == sid))
            return {row.nudge_id: row.status for row in rows}

    def queued() -> list[str]:
        with sessions() as session:
            return [t["task_id"] for t in list_tasks(session, 1000) if t["supporter_id"] == sid]

    running = consumers()
    rounds = DispatchRounds(running.worker.dispatcher)
    wait_until("the welcome sent", lambda: statuses().get(sent_nudge.nudge_id) == "sent")
    wait_until("the open task queued", lambda: queued() == [open_task.task_id])
    seen = rounds.sends  # more dispatcher rounds, which must leave the held-out nudge alone
    wait_until("three more dispatcher rounds", lambda: rounds.sends >= seen + 3)
    running.stop()

    assert statuses() == {held_nudge.nudge_id: "held_out", sent_nudge.nudge_id: "sent"}
    with sessions() as session:
        outbox = [
            m.nudge_id
            for m in session.scalars(select(OutboxMessage))
            if m.nudge_id.endswith(sid)  # other tests' nudges share the topic (never sent here)
        ]
        held_tasks = [
            (t["task_id"], t["priority"])
            for t in list_tasks(session, 1000, status="held_out")
            if t["supporter_id"] == sid
        ]
    assert outbox == [sent_nudge.nudge_id]
    assert queued() == [open_task.task_id]
    assert held_tasks == [(held_task.task_id, "high")]


# --- the read model against a fold of the ledger ------------------------------------------------

_BUILDERS = (signup, petition, rsvp, attended, no_show)


@st.composite
def _late_arrivals(draw: st.DrawFn) -> tuple[list[Event], list[int], list[int]]:
    """A few supporters' events at sub-second times (as the API and webhooks stamp them),
    an arrival order, and where the consumer's batches end."""
    sids = [new_sid() for _ in range(draw(st.integers(1, 3)))]
    events: list[Event] = []
    for _ in range(draw(st.integers(1, 12))):
        build = draw(st.sampled_from(_BUILDERS))
        seconds = draw(st.integers(0, 40 * 86_400))  # within the playbook's memory
        micros = draw(st.integers(0, 999_999))
        events.append(
            build(
                (seconds + micros / 1e6) / 86_400,
                sid=draw(st.sampled_from(sids)),
                postcode="E1 6AN",
            )
        )
    order = draw(st.permutations(range(len(events))))
    cuts = sorted(draw(st.lists(st.integers(1, len(events)), max_size=4)))
    return events, list(order), cuts


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=_late_arrivals())
def test_the_stored_score_equals_a_fold_of_the_ledger_whatever_the_arrival_order(
    sessions: sessionmaker[Session], case: tuple[list[Event], list[int], list[int]]
) -> None:
    """Events arrive late and out of order, at sub-second times; the consumer stores each
    engagement.scored the stream emits, in batches. The read model must then hold what a
    fold of the whole ledger says: score, rung and as-of alike."""
    events, order, cuts = case
    engine = default_engine()
    live: dict[str, SupporterState] = {}
    emitted: list[EngagementScored] = []
    arrived = max(e.event_time for e in events).timestamp()  # everything arrives at the end
    for i in order:
        event = events[i]
        outputs = engine.apply(live.setdefault(event.key(), SupporterState()), event, arrived)
        emitted += [o for o in outputs if isinstance(o, EngagementScored)]
    for start, end in itertools.pairwise([0, *cuts, len(emitted)]):
        with sessions.begin() as session:
            store_scores(session, emitted[start:end])

    ledger: dict[str, SupporterState] = {}  # the ledger, folded in acceptance order
    for event in sorted(events, key=lambda e: e.event_time):
        engine.apply(ledger.setdefault(event.key(), SupporterState()), event, arrived, emit=False)
    expected = final_scores(engine, ledger)
    assert expected.keys() == live.keys()
    for sid, (score, rung, as_of) in expected.items():
        assert stored(sessions, sid) == (score, rung, as_of.isoformat()), sid


def test_a_late_paper_petition_moves_the_stored_score(sessions: sessionmaker[Session]) -> None:
    """The case found by hand: a signup stamped with microseconds, then a paper petition dated
    30 s earlier. The store kept -4.01 and `supporter` while explain said -2.01 and `signer`."""
    sid = new_sid()
    first = signup(0.5 / 86_400 + 0.123456 / 86_400, sid=sid)
    late = petition(-30 / 86_400, sid=sid)
    state, engine = SupporterState(), default_engine()
    for event in (first, late):
        outputs = engine.apply(state, event, first.event_time.timestamp() + 60)
        with sessions.begin() as session:
            store_scores(session, [o for o in outputs if isinstance(o, EngagementScored)])
    ((score, rung, as_of),) = final_scores(engine, {sid: state}).values()
    assert rung == "signer"
    assert stored(sessions, sid) == (score, rung, as_of.isoformat())
