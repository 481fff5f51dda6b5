"""The ledger relay on both databases and the embedded broker: publish in order, once acked."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from infra.broker import EmbeddedBroker
from infra.db import LedgerEvent
from infra.kafka import ledger_producer
from producers import relay as relay_module
from producers.ledger import mark_all_unpublished, record_events
from producers.relay import LedgerRelay
from schemas.events import Event, EventRSVP, SupporterSignup
from tests.polling import wait_until

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def read(bootstrap: str, topic: str, want: int, keep: Callable[[Any], bool]) -> list[Any]:
    """Records of ``topic`` that ``keep`` accepts, from the beginning, until ``want`` arrived."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        found: list[Any] = []

        def arrived() -> bool:
            if len(found) >= want:
                return True
            for messages in consumer.poll(timeout_ms=100).values():
                found.extend(m for m in messages if keep(m))
            return False

        wait_until(
            f"{want} records on {topic}", arrived, 30, 0, lambda: f"only {len(found)} arrived"
        )
        return found
    finally:
        consumer.close()


@pytest.fixture
def producer(broker: EmbeddedBroker) -> Iterator[Any]:
    p = ledger_producer(broker.bootstrap)
    yield p
    p.close(timeout=5)


def published(sessions: sessionmaker[Session]) -> dict[uuid.UUID, bool]:
    with sessions() as session:
        return {r.event_id: r.published for r in session.scalars(select(LedgerEvent))}


def record(sessions: sessionmaker[Session], events: list[Event]) -> None:
    with sessions.begin() as session:
        record_events(session, events, T0)


def test_pending_events_are_published_to_their_topics_and_marked(
    sessions: sessionmaker[Session], broker: EmbeddedBroker, producer: Any
) -> None:
    sid = f"sup_{uuid.uuid4().hex}"
    events: list[Event] = [
        SupporterSignup(event_time=T0, supporter_id=sid, email="jo@example.org"),
        EventRSVP(event_time=T0, supporter_id=sid, email="jo@example.org", meeting_id="m"),
    ]
    record(sessions, events)
    relay = LedgerRelay(sessions, producer)

    assert relay.publish_pending() == 2
    assert relay.publish_pending() == 0

    assert published(sessions) == {e.event_id: True for e in events}
    for event in events:
        (message,) = read(
            broker.bootstrap,
            event.topic,
            1,
            lambda m, e=event: (
                m.key == sid.encode()
                and e.event_id == type(e).model_validate_json(m.value).event_id
            ),
        )
        assert type(event).model_validate_json(message.value) == event
        assert message.timestamp == _ms(T0)  # record() accepted them at T0


def test_events_are_published_oldest_first_in_batches(
    sessions: sessionmaker[Session],
    broker: EmbeddedBroker,
    producer: Any,
    tmp_topic: Callable[..., str],
) -> None:
    topic = tmp_topic("relay")
    ids = [uuid.uuid4() for _ in range(5)]
    with sessions.begin() as session:
        for n, event_id in enumerate(ids):
            session.add(
                LedgerEvent(
                    event_id=event_id,
                    topic=topic,
                    key="k",
                    payload=f'{{"n": {n}}}',
                    accepted_at=T0 + timedelta(seconds=n),
                    published=False,
                )
            )
    relay = LedgerRelay(sessions, producer, batch=2)

    assert [relay.publish_pending() for _ in range(4)] == [2, 2, 1, 0]

    messages = read(broker.bootstrap, topic, 5, lambda m: True)
    assert [m.value for m in messages] == [f'{{"n": {n}}}'.encode() for n in range(5)]
    assert set(published(sessions).values()) == {True}
    # Each record is stamped with the row's accepted_at, not the moment it was sent.
    assert [m.timestamp for m in messages] == [_ms(T0 + timedelta(seconds=n)) for n in range(5)]


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def test_a_republished_ledger_carries_the_same_arrival_times(
    sessions: sessionmaker[Session],
    broker: EmbeddedBroker,
    producer: Any,
    tmp_topic: Callable[..., str],
) -> None:
    topic = tmp_topic("replay")
    accepted = [T0 + timedelta(milliseconds=1500), T0 + timedelta(days=3, microseconds=999)]
    with sessions.begin() as session:
        for n, at in enumerate(accepted):
            session.add(
                LedgerEvent(
                    event_id=uuid.uuid4(), topic=topic, key="k", payload=str(n), accepted_at=at
                )
            )
    relay = LedgerRelay(sessions, producer)
    assert relay.publish_pending() == 2
    with sessions.begin() as session:
        mark_all_unpublished(session)  # what `engage up` does after the broker lost its log
    assert relay.publish_pending() == 2

    messages = read(broker.bootstrap, topic, 4, lambda m: True)
    assert [(m.value, m.timestamp) for m in messages] == [
        (b"0", _ms(accepted[0])),
        (b"1", _ms(T0 + timedelta(days=3))),  # whole milliseconds, rounded down
    ] * 2
    assert {m.timestamp_type for m in messages} == {0}  # CreateTime: the time we gave


class FailingFuture:
    def get(self, timeout: float | None = None) -> None:
        raise TimeoutError("no acknowledgement")


class FlakyProducer:
    """Sends through the real producer, but the first ``failures`` sends are never acked."""

    def __init__(self, real: Any, failures: int) -> None:
        self.real, self.failures = real, failures

    def send(self, topic: str, key: bytes, value: bytes, timestamp_ms: int) -> Any:
        if self.failures > 0:
            self.failures -= 1
            return FailingFuture()
        return self.real.send(topic, key=key, value=value, timestamp_ms=timestamp_ms)

    def flush(self) -> None:
        self.real.flush()


def test_an_unacknowledged_batch_stays_unpublished_and_goes_out_next_time(
    sessions: sessionmaker[Session],
    broker: EmbeddedBroker,
    producer: Any,
    tmp_topic: Callable[..., str],
) -> None:
    topic = tmp_topic("flaky")
    with sessions.begin() as session:
        session.add(
            LedgerEvent(event_id=uuid.uuid4(), topic=topic, key="k", payload="{}", published=False)
        )
    relay = LedgerRelay(sessions, FlakyProducer(producer, failures=1))

    with pytest.raises(TimeoutError):
        relay.publish_pending()
    assert set(published(sessions).values()) == {False}

    assert relay.publish_pending() == 1
    assert set(published(sessions).values()) == {True}
    assert len(read(broker.bootstrap, topic, 1, lambda m: True)) == 1


def test_the_run_loop_publishes_what_arrives_until_stopped(
    sessions: sessionmaker[Session],
    broker: EmbeddedBroker,
    producer: Any,
    tmp_topic: Callable[..., str],
) -> None:
    topic = tmp_topic("loop")
    stop = threading.Event()
    relay = LedgerRelay(sessions, producer)
    thread = threading.Thread(target=relay.run, args=(stop,), daemon=True)
    thread.start()
    try:
        with sessions.begin() as session:
            session.add(LedgerEvent(event_id=uuid.uuid4(), topic=topic, key="k", payload="1"))
        wait_until(
            "the relay to publish", lambda: set(published(sessions).values()) == {True}, 30, 0.02
        )
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert [m.value for m in read(broker.bootstrap, topic, 1, lambda m: True)] == [b"1"]


def test_an_idle_relay_wakes_on_a_commit_without_waiting_for_its_fallback_read(
    sessions: sessionmaker[Session],
    broker: EmbeddedBroker,
    producer: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL: the ingest's NOTIFY wakes the relay; SQLite: the file's data_version. The
    row is committed once the relay has read and gone idle, and its fallback read is an hour
    away, so only the wake-up can publish the row."""
    idle = threading.Event()
    waker_for = relay_module.waker_for

    class Watched:
        """The relay's waker, noting when the relay first waits on it (it is idle)."""

        def __init__(self, sessions: sessionmaker[Session], idle_s: float) -> None:
            self.waker = waker_for(sessions, idle_s)
            self.drain, self.close = self.waker.drain, self.waker.close

        def wait(self, stop: threading.Event, timeout_s: float) -> None:
            idle.set()
            self.waker.wait(stop, timeout_s)

    monkeypatch.setattr(relay_module, "waker_for", Watched)
    sid = f"sup_{uuid.uuid4().hex}"
    event = SupporterSignup(event_time=T0, supporter_id=sid)
    stop = threading.Event()
    relay = LedgerRelay(sessions, producer, fallback_s=3600.0)
    thread = threading.Thread(target=relay.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until("the relay to go idle", idle.is_set)
        record(sessions, [event])  # record_events NOTIFYs on PostgreSQL
        wait_until("the relay to publish", lambda: published(sessions) == {event.event_id: True})
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    (message,) = read(broker.bootstrap, event.topic, 1, lambda m: m.key == sid.encode())
    assert SupporterSignup.model_validate_json(message.value).event_id == event.event_id


def test_the_relay_opens_its_waker_again_after_losing_its_connection(
    sessions: sessionmaker[Session],
    broker: EmbeddedBroker,
    producer: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The LISTEN (or data_version) connection dropped under an idle relay: a warning, then
    the relay reads as it polls, opens another one, and publishes what was committed."""
    wakers: list[Any] = []
    waker_for = relay_module.waker_for

    def kept(sessions: sessionmaker[Session], idle_s: float) -> Any:
        wakers.append(waker_for(sessions, idle_s))
        return wakers[-1]

    monkeypatch.setattr(relay_module, "waker_for", kept)
    sid = f"sup_{uuid.uuid4().hex}"
    event = SupporterSignup(event_time=T0, supporter_id=sid)
    stop = threading.Event()
    relay = LedgerRelay(sessions, producer, fallback_s=3600.0)
    thread = threading.Thread(target=relay.run, args=(stop,), daemon=True)
    with capture_logs() as logs:
        thread.start()
        try:
            (waker,) = wait_until("the relay's waker to connect", lambda: wakers[-1:])
            connection = wait_until(
                "its connection", lambda: waker.inner and waker.inner.connection
            )
            connection.close()  # what a restarted database does to it
            record(sessions, [event])
            wait_until(
                "the relay to publish", lambda: published(sessions) == {event.event_id: True}
            )
        finally:
            stop.set()
            thread.join(10)
    assert not thread.is_alive()
    assert [line["event"] for line in logs if line["log_level"] == "warning"] == [
        "relay.waker_lost"
    ]
    assert waker.inner is None or waker.inner.connection is not connection
