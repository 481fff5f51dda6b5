"""Only bad input is dead-lettered, with a log line naming where it was; a bug in our own code
stops the worker loudly (the supervisor restarts it). The stream worker, the consumer worker
and its sender, and the ledger relay, on the embedded broker and both databases."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from aiokafka import TopicPartition as AioTopicPartition
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from consumers.dispatch import Dispatcher
from consumers.rendering import TemplateBook
from consumers.runner import ConsumerWorker, parse_batch, send_until
from infra.broker import EmbeddedBroker
from infra.db import LedgerEvent
from infra.kafka import ledger_producer
from producers.relay import LedgerRelay
from schemas.events import EngagementScored
from streams.engagement import Engine
from streams.playbook import load_playbook
from streams.worker import StreamWorker
from tests.integration.running import Running
from tests.integration.test_stream_worker import (
    SHORT_JOIN,
    Outputs,
    Producer,
    attended,
    keyed,
    new_sid,
    signup,
)
from tests.polling import wait_until

EMAIL = "jo@example.org"  # in the bad records: it must reach no log line


class BrokenRule:
    """The default playbook with a bug in deciding rules for one supporter: a KeyError, as a
    new rule reading a field that is not there would raise. A wrapper, not a subclass: the
    compiled Engine (mypyc, streams/compiled.py) cannot be subclassed by interpreted code."""

    def __init__(self, sid: str) -> None:
        self.engine = Engine(load_playbook())
        self.sid = sid

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def apply(self, state: Any, event: Any, *args: Any, **kwargs: Any) -> Any:
        caused = self.engine.apply(state, event, *args, **kwargs)
        if event.key() == self.sid:  # folded; a rule is decided for them, with a bug
            raise KeyError("meeting_title")
        return caused


def stream_worker(bootstrap: str, group_id: str, engine: Engine) -> Running[StreamWorker]:
    return Running(StreamWorker(bootstrap, engine, group_id=group_id, consumer_settings=SHORT_JOIN))


def stopped(running: Running[Any]) -> bool:
    return not running.thread.is_alive()


# --- the stream worker ------------------------------------------------------------------------


def test_a_record_that_does_not_parse_is_dead_lettered_with_a_log_line_naming_its_offset(
    broker: EmbeddedBroker, group_id: str
) -> None:
    sid = new_sid()
    producer = Producer(broker.bootstrap)
    outputs = Outputs(broker.bootstrap, keyed({sid}))
    try:
        bad = producer.send("event.attended", sid.encode(), f"{{not json {EMAIL}".encode())
        producer.event(attended(sid))  # its neighbour on the partition goes on
        with capture_logs(processors=[merge_contextvars]) as logs:
            running = stream_worker(broker.bootstrap, group_id, Engine(load_playbook()))
            try:
                outputs.wait_for(
                    "the dead letter and the neighbour's score",
                    lambda r: bool(outputs.of("deadletter") and outputs.of("engagement.scored")),
                )
            finally:
                running.stop()
    finally:
        outputs.close()
        producer.close()

    (letter,) = outputs.of("deadletter")
    assert (letter["partition"], letter["offset"]) == (bad.partition, bad.offset)
    ours = [
        line
        for line in logs
        if line["event"] == "stream.dead_letter"
        and (line["topic"], line["partition"], line["offset"])
        == ("event.attended", bad.partition, bad.offset)
    ]
    assert ours == [
        {
            "event": "stream.dead_letter",
            "log_level": "warning",
            "topic": "event.attended",
            "partition": bad.partition,
            "offset": bad.offset,
            "reason": "ValidationError: record: json_invalid",
        }
    ]
    assert EMAIL not in repr(logs)


def test_a_bug_in_a_rule_stops_the_stream_worker_and_dead_letters_nothing(
    broker: EmbeddedBroker, group_id: str
) -> None:
    sid = new_sid()
    producer = Producer(broker.bootstrap)
    try:
        joined = producer.event(signup(sid))  # consenting: the welcome rule is decided
    finally:
        producer.close()

    with capture_logs(processors=[merge_contextvars]) as logs:
        running = stream_worker(broker.bootstrap, group_id, cast(Engine, BrokenRule(sid)))
        wait_until("the worker to stop", lambda: stopped(running))
    with pytest.raises(KeyError) as raised:
        running.stop()

    assert any(
        f"supporter.signup partition {joined.partition} offset {joined.offset}" in note
        for note in raised.value.__notes__
    )
    (failed,) = [line for line in logs if line["event"] == "stream.fold_failed"]
    assert failed["log_level"] == "error" and failed["supporter_id"] == sid
    assert (failed["topic"], failed["partition"], failed["offset"]) == (
        "supporter.signup",
        joined.partition,
        joined.offset,
    )
    outputs = Outputs(broker.bootstrap, keyed({sid}))
    try:
        outputs.drain()
    finally:
        outputs.close()
    assert outputs.of("deadletter") == []
    assert outputs.records == []  # nothing published for the event it failed on


# --- the consumer worker ----------------------------------------------------------------------


def test_a_record_the_consumer_worker_refuses_is_logged_with_its_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sid = new_sid()
    scores = AioTopicPartition(EngagementScored.topic, 1)
    unstorable = EngagementScored(
        event_time=datetime.now(UTC),
        supporter_id=sid,
        score=1.0,
        rung="member",
        cause_event_id=uuid.uuid4(),
        half_life_days=90.0,
    )
    # The schema now refuses what the table cannot hold; a column narrower than it would not.
    monkeypatch.setattr(
        "consumers.runner.unstorable_score",
        lambda score: "rung: longer than 5 characters" if score.supporter_id == sid else None,
    )

    class Message:
        def __init__(self, offset: int, value: bytes) -> None:
            self.offset, self.value, self.key = offset, value, sid.encode()

    with capture_logs(processors=[merge_contextvars]) as logs:
        batch = parse_batch(
            {
                scores: [
                    Message(10, f"{{not json {EMAIL}".encode()),
                    Message(11, unstorable.model_dump_json().encode()),
                ]
            }
        )

    assert len(batch.letters) == 2 and batch.scores == []
    assert logs == [
        {
            "event": "consumers.dead_letter",
            "log_level": "warning",
            "topic": EngagementScored.topic,
            "partition": 1,
            "offset": 10,
            "reason": "ValidationError: record: json_invalid",
        },
        {
            "event": "consumers.dead_letter",
            "log_level": "warning",
            "topic": EngagementScored.topic,
            "partition": 1,
            "offset": 11,
            "event_id": str(unstorable.event_id),
            "supporter_id": sid,
            "reason": "rung: longer than 5 characters",
        },
    ]
    assert EMAIL not in repr(logs)


def outbox_dispatcher(sessions: sessionmaker[Session]) -> Dispatcher:
    return Dispatcher(sessions, TemplateBook(), {}, "Grassroots Together", "http://x.test")


def test_a_bug_in_the_sender_stops_the_consumer_worker(
    broker: EmbeddedBroker,
    sessions: sessionmaker[Session],
    group_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dispatcher = outbox_dispatcher(sessions)

    def broken(limit: int = 500) -> int:
        raise KeyError("channel")

    monkeypatch.setattr(dispatcher, "dispatch_pending", broken)
    running = Running(ConsumerWorker(broker.bootstrap, sessions, dispatcher, group_id, SHORT_JOIN))
    wait_until("the worker to stop", lambda: stopped(running))

    with pytest.raises(KeyError, match="channel"):
        running.stop()


def test_the_sender_logs_a_database_hiccup_with_its_traceback_and_tries_again(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    dispatcher = outbox_dispatcher(sessions)
    calls: list[int] = []

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def hiccup_then_stop(limit: int = 500) -> int:
            calls.append(limit)
            if len(calls) == 1:
                raise OperationalError("SELECT", {}, Exception("database is locked"))
            loop.call_soon_threadsafe(stop.set)
            return 0

        monkeypatch.setattr(dispatcher, "dispatch_pending", hiccup_then_stop)
        await asyncio.wait_for(send_until(dispatcher, stop), 30)

    with capture_logs() as logs:
        asyncio.run(run())

    assert len(calls) >= 2
    (failed,) = [line for line in logs if line["event"] == "dispatch.failed"]
    assert failed["log_level"] == "warning" and failed["exc_info"] is True


# --- the ledger relay -------------------------------------------------------------------------


def add_row(sessions: sessionmaker[Session], topic: str) -> None:
    with sessions.begin() as session:
        session.add(LedgerEvent(event_id=uuid.uuid4(), topic=topic, key="k", payload="{}"))


def all_published(sessions: sessionmaker[Session]) -> bool:
    with sessions() as session:
        return all(session.scalars(select(LedgerEvent.published)))


class FailingFuture:
    def get(self, timeout: float | None = None) -> None:
        raise TimeoutError("no acknowledgement")


class OutageOnce:
    """Sends through the real producer, but the first send is never acknowledged."""

    def __init__(self, real: Any) -> None:
        self.real, self.failed = real, False

    def send(self, topic: str, key: bytes, value: bytes, timestamp_ms: int) -> Any:
        if not self.failed:
            self.failed = True
            return FailingFuture()
        return self.real.send(topic, key=key, value=value, timestamp_ms=timestamp_ms)

    def flush(self) -> None:
        self.real.flush()


def test_the_relay_logs_an_outage_with_its_traceback_and_publishes_after_it(
    broker: EmbeddedBroker, sessions: sessionmaker[Session], tmp_topic: Any
) -> None:
    add_row(sessions, tmp_topic("outage"))
    producer = ledger_producer(broker.bootstrap)
    relay = LedgerRelay(sessions, OutageOnce(producer))
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), daemon=True)
    try:
        with capture_logs() as logs:
            thread.start()
            wait_until("the row published after the outage", lambda: all_published(sessions))
    finally:
        stop.set()
        thread.join(10)
        producer.close(timeout=5)

    assert not thread.is_alive()
    (failed,) = [line for line in logs if line["event"] == "relay.publish_failed"]
    assert failed["log_level"] == "warning" and failed["exc_info"] is True


class BrokenProducer:
    def send(self, topic: str, key: bytes, value: bytes, timestamp_ms: int) -> Any:
        raise TypeError("a bug, not an outage")

    def flush(self) -> None:
        pass


def test_a_bug_in_the_relay_stops_it(sessions: sessionmaker[Session]) -> None:
    add_row(sessions, "any.topic")
    relay = LedgerRelay(sessions, BrokenProducer())

    with capture_logs() as logs, pytest.raises(TypeError, match="a bug"):
        relay.run(threading.Event())

    assert logs == []
