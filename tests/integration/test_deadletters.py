"""`engage deadletters` on the embedded broker and both databases: list the dead letters,
re-drive them to their source topic once (again only when asked), refuse what cannot go.

The dead-letter topic is the session's, shared with other tests: each test picks out its own
letters by id or by a marker in their error, never by count.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from engage import cli
from infra.broker import EmbeddedBroker
from infra.db import DeadLetterRedrive
from infra.kafka import ConsumerSettings, dead_letter, ledger_producer
from producers.deadletters import (
    Letter,
    Outcome,
    Selection,
    list_letters,
    parse_since,
    plan_redrive,
    read_letters,
    redrive_letters,
)
from schemas.events import DeadLetter
from streams.engagement import Engine
from streams.playbook import load_playbook
from streams.worker import StreamWorker
from tests.integration.running import Running
from tests.polling import wait_until

DEADLINE_S = 60.0
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture
def producer(broker: EmbeddedBroker) -> Iterator[Any]:
    p = ledger_producer(broker.bootstrap)
    yield p
    p.close(timeout=5)


def publish(producer: Any, topic: str, key: bytes | None, value: bytes) -> Any:
    """Send one record and wait for the broker's acknowledgement; its metadata."""
    return producer.send(topic, key=key, value=value).get(30)


def publish_letter(producer: Any, letter: tuple[str, bytes, bytes]) -> Any:
    return publish(producer, *letter)


def wait_for_letter(bootstrap: str, letter_id: str) -> Letter:
    def found() -> Letter | None:
        letters = read_letters(bootstrap).letters
        return next((item for item in letters if item.id == letter_id), None)

    return wait_until(f"the dead letter {letter_id}", found, DEADLINE_S, 0.2)


def keyed_records(bootstrap: str, topic: str, partition: int, key: bytes) -> list[Any]:
    """The records of one partition with ``key``, from the start up to its high watermark."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, partition)
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        found: list[Any] = []

        def at_the_end() -> bool:
            found.extend(m for m in consumer.poll(timeout_ms=100).get(tp, []) if m.key == key)
            high = consumer.highwater(tp)
            return high is not None and consumer.position(tp) >= high

        wait_until(f"reading {topic}:{partition} to its end", at_the_end, DEADLINE_S, 0)
        return found
    finally:
        consumer.close()


def redrives(sessions: sessionmaker[Session]) -> dict[str, tuple[datetime, str]]:
    with sessions() as session:
        return {
            r.letter_id: (r.redriven_at, r.target_topic)
            for r in session.scalars(select(DeadLetterRedrive))
        }


def by_id(outcomes: list[Outcome]) -> dict[str, Outcome]:
    assert len({o.id for o in outcomes}) == len(outcomes), outcomes
    return {o.id: o for o in outcomes}


# --- through the real stream worker -----------------------------------------------------------


def test_a_record_the_worker_dead_lettered_is_listed_and_redriven_once(
    broker: EmbeddedBroker,
    producer: Any,
    sessions: sessionmaker[Session],
    group_id: str,
) -> None:
    sid = f"sup_{uuid.uuid4().hex}"
    bad = b"{not json"
    meta = publish(producer, "event.attended", sid.encode(), bad)
    letter_id = f"event.attended:{meta.partition}:{meta.offset}"
    worker = Running(
        StreamWorker(
            broker.bootstrap,
            Engine(load_playbook()),
            group_id=group_id,
            consumer_settings=ConsumerSettings(session_timeout_ms=6_000),  # a 3 s join on Tansu
        )
    )
    try:
        wait_for_letter(broker.bootstrap, letter_id)
        recent = datetime.now(UTC) - timedelta(minutes=10)
        listing = list_letters(
            broker.bootstrap,
            sessions,
            Selection(
                topic="event.attended", since=recent, contains="invalid JSON", consumer="stream"
            ),
        )
        (row,) = [row for row in listing.rows if row["id"] == letter_id]
        assert row["source_key"] == sid and row["payload"] == "{not json"
        assert row["redriven_at"] is None and "ValidationError" in row["error"]
        for other in (Selection(topic="petition.signed"), Selection(consumer="consumers")):
            assert letter_id not in {
                r["id"] for r in list_letters(broker.bootstrap, sessions, other).rows
            }

        chosen = Selection(frozenset({letter_id}))
        dry = redrive_letters(broker.bootstrap, sessions, chosen, dry_run=True)
        assert [(o.id, o.status) for o in dry] == [(letter_id, "would redrive")]
        assert redrives(sessions) == {}

        (first,) = redrive_letters(broker.bootstrap, sessions, chosen)
        assert (first.id, first.status, first.partition) == (letter_id, "redriven", meta.partition)
        assert first.offset is not None and first.offset > meta.offset
        when, target = redrives(sessions)[letter_id]
        assert target == "event.attended" and when.tzinfo is not None
        on_topic = keyed_records(broker.bootstrap, "event.attended", meta.partition, sid.encode())
        # The original and exactly one re-drive (the dry run sent nothing), byte for byte.
        assert [(m.offset, m.value) for m in on_topic] == [(meta.offset, bad), (first.offset, bad)]

        (second,) = redrive_letters(broker.bootstrap, sessions, chosen)
        assert (second.id, second.status) == (letter_id, "already redriven")
        assert "--again" in second.detail
        assert (
            len(keyed_records(broker.bootstrap, "event.attended", meta.partition, sid.encode()))
            == 2
        )

        # Still broken: the worker dead-letters the re-driven record again, as a new letter.
        again_letter = wait_for_letter(
            broker.bootstrap, f"event.attended:{meta.partition}:{first.offset}"
        )
        assert again_letter.letter.payload == "{not json"

        (third,) = redrive_letters(broker.bootstrap, sessions, chosen, again=True)
        assert (third.status, third.partition) == ("redriven", meta.partition)
        assert third.offset is not None and third.offset > first.offset
        later, _ = redrives(sessions)[letter_id]
        assert later >= when
        on_topic = keyed_records(broker.bootstrap, "event.attended", meta.partition, sid.encode())
        assert [m.offset for m in on_topic] == [meta.offset, first.offset, third.offset]
        assert {m.value for m in on_topic} == {bad}
    finally:
        worker.stop()


# --- letters built with infra.kafka.dead_letter -----------------------------------------------


def test_refused_letters_are_reported_and_the_others_still_go(
    broker: EmbeddedBroker, producer: Any, sessions: sessionmaker[Session]
) -> None:
    marker = uuid.uuid4().hex
    sid = f"sup_{uuid.uuid4().hex}"
    offset = int(time.time() * 1000)  # an offset no other test's letter has
    value = b'{"fixed": "' + marker.encode() + b'"}'
    error = f"ValueError: {marker} broke it"
    good = dead_letter("consumers", "event.attended", 1, offset, sid.encode(), value, error)
    unknown = dead_letter("consumers", "no.such.topic", 0, offset, b"k", b"{}", error)
    empty = dead_letter("consumers", "event.attended", 1, offset + 1, sid.encode(), None, error)
    for letter in (good, unknown, good, empty):  # the good one dead-lettered twice (a replay)
        publish_letter(producer, letter)
    ids = {
        "good": f"event.attended:1:{offset}",
        "unknown": f"no.such.topic:0:{offset}",
        "empty": f"event.attended:1:{offset + 1}",
    }

    mine = Selection(contains=marker.upper())
    listed = [row["id"] for row in list_letters(broker.bootstrap, sessions, mine).rows]
    assert sorted(listed) == sorted([ids["good"], ids["good"], ids["unknown"], ids["empty"]])
    only_unknown = Selection(contains=marker, topic="no.such.topic")
    assert [r["id"] for r in list_letters(broker.bootstrap, sessions, only_unknown).rows] == [
        ids["unknown"]
    ]

    dry = by_id(redrive_letters(broker.bootstrap, sessions, mine, dry_run=True))
    assert {i: o.status for i, o in dry.items()} == {
        ids["good"]: "would redrive",
        ids["unknown"]: "refused",
        ids["empty"]: "refused",
    }
    assert redrives(sessions) == {}

    outcomes = by_id(redrive_letters(broker.bootstrap, sessions, mine))
    assert outcomes[ids["good"]].status == "redriven"
    assert outcomes[ids["unknown"]].status == "refused"
    assert outcomes[ids["unknown"]].detail == "source topic 'no.such.topic' is not in the catalogue"
    assert outcomes[ids["empty"]].status == "refused"
    assert outcomes[ids["empty"]].detail == "its payload is empty: nothing to re-drive"
    assert set(redrives(sessions)) == {ids["good"]}
    on_topic = keyed_records(broker.bootstrap, "event.attended", 1, sid.encode())
    assert [(m.offset, m.value) for m in on_topic] == [(outcomes[ids["good"]].offset, value)]

    again = by_id(redrive_letters(broker.bootstrap, sessions, mine))
    assert again[ids["good"]].status == "already redriven"
    assert len(keyed_records(broker.bootstrap, "event.attended", 1, sid.encode())) == 1


# --- the command -----------------------------------------------------------------------------


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """``cli.main`` configures structlog for the process: put the test run's own back after."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def test_the_command_lists_and_redrives(
    broker: EmbeddedBroker,
    producer: Any,
    database_url: str,
    sessions: sessionmaker[Session],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    logging_restored: None,
) -> None:
    for name, setting in {
        "ENGAGE_HOME": str(tmp_path),
        "ENGAGE_DATABASE_URL": database_url,
        "ENGAGE_KAFKA_BOOTSTRAP": broker.bootstrap,
        "ENGAGE_LOG_LEVEL": "warning",
    }.items():
        monkeypatch.setenv(name, setting)
    marker = uuid.uuid4().hex
    sid = f"sup_{uuid.uuid4().hex}"
    offset = int(time.time() * 1000)
    value = b'{"a": "' + marker.encode() + b'"}'
    publish_letter(
        producer,
        dead_letter("stream", "petition.signed", 0, offset, sid.encode(), value, f"Bad: {marker}"),
    )
    letter_id = f"petition.signed:0:{offset}"

    def run(*args: str) -> tuple[int, str]:
        code = cli.main(list(args))
        return code, capsys.readouterr().out

    code, out = run("deadletters", "--contains", marker, "--json")
    (row,) = json.loads(out)
    assert code == 0
    assert (row["id"], row["consumer"], row["source_key"]) == (letter_id, "stream", sid)
    assert row["payload"] == value.decode() and row["redriven_at"] is None

    code, out = run("deadletters", "--contains", marker, "--since", "1h")
    line, summary = out.splitlines()
    assert line.startswith(f"{letter_id}  stream    ") and line.endswith(f"Z  Bad: {marker}")
    assert summary == "1 dead letters (0 re-driven)"

    assert run("deadletters", "redrive", "--id", letter_id, "--dry-run") == (
        0,
        f"would redrive    {letter_id}  to petition.signed\n1 would redrive\n",
    )
    assert redrives(sessions) == {}

    code, out = run("deadletters", "redrive", "--id", letter_id)
    assert code == 0 and out.startswith(f"redriven         {letter_id}  to petition.signed ")
    code, out = run("deadletters", "redrive", "--id", letter_id)
    assert code == 0 and out.startswith(f"already redriven {letter_id}  at ")
    code, out = run("deadletters", "redrive", "--id", letter_id, "--again", "--json")
    (outcome,) = json.loads(out)
    assert code == 0 and outcome["status"] == "redriven"
    on_topic = keyed_records(broker.bootstrap, "petition.signed", 0, sid.encode())
    assert [m.value for m in on_topic] == [value, value]
    assert on_topic[1].offset == outcome["offset"]

    code, out = run("deadletters", "--contains", marker)
    assert "  [re-driven " in out and out.endswith("1 dead letters (1 re-driven)\n")

    code, out = run("deadletters", "redrive", "--id", "petition.signed:0:999999999999999")
    assert code == 1 and out.startswith("not found        petition.signed:0:999999999999999")
    with pytest.raises(SystemExit, match="or give --all"):
        cli.main(["deadletters", "redrive"])
    with pytest.raises(SystemExit, match="--since: not a time"):
        cli.main(["deadletters", "--since", "yesterday"])
    with pytest.raises(SystemExit, match="go with `engage deadletters redrive`"):
        cli.main(["deadletters", "--dry-run"])


# --- the pure parts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW - timedelta(minutes=30)),
        ("12h", NOW - timedelta(hours=12)),
        ("7d", NOW - timedelta(days=7)),
        ("2W", NOW - timedelta(weeks=2)),
        ("2026-11-24T09:00:00+01:00", datetime(2026, 11, 24, 8, 0, tzinfo=UTC)),
    ],
)
def test_since_is_a_duration_back_or_a_time_with_its_zone(text: str, expected: datetime) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [("2026-11-24T09:00", "give a time zone"), ("yesterday", "not a time"), ("5y", "not a time")],
)
def test_since_refuses_what_is_not_a_time(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_since(text, NOW)


def letter(topic: str, offset: int, payload: str = "{}") -> Letter:
    record = DeadLetter(
        event_time=NOW,
        source_topic=topic,
        partition=0,
        offset=offset,
        error="boom",
        payload=payload,
        consumer="stream",
    )
    return Letter(record, 0, offset)


def test_the_plan_sends_each_letter_once_and_says_why_not_the_rest() -> None:
    letters = [
        letter("event.rsvp", 1),
        letter("event.rsvp", 1),  # dead-lettered twice: sent once
        letter("event.rsvp", 2),  # re-driven before
        letter("deadletter", 3),
        letter("gone.topic", 4),
        letter("event.rsvp", 5, payload=""),
    ]
    known = {"event.rsvp", "deadletter"}
    send, others = plan_redrive(letters, {"event.rsvp:0:2": NOW}, False, known, {"x:0:9"})
    assert [item.id for item in send] == ["event.rsvp:0:1"]
    assert [(o.id, o.status, o.detail) for o in others] == [
        ("event.rsvp:0:2", "already redriven", "at 2026-11-25T12:00:00+00:00; --again to repeat"),
        ("deadletter:0:3", "refused", "its source is the dead-letter topic itself"),
        ("gone.topic:0:4", "refused", "source topic 'gone.topic' is not in the catalogue"),
        ("event.rsvp:0:5", "refused", "its payload is empty: nothing to re-drive"),
        ("x:0:9", "not found", "no letter with this id matches"),
    ]
    send, _ = plan_redrive(letters, {"event.rsvp:0:2": NOW}, True, known)
    assert [item.id for item in send] == ["event.rsvp:0:1", "event.rsvp:0:2"]
