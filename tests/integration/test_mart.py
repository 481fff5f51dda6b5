"""The analysts' mart on both databases: idempotent upserts whatever the order of arrival,
erasure (and nothing kept of the person afterwards), the sink worker on the embedded broker
with a dead letter, a rebuild from the topics equal to the mart kept record by record, the
CSV and Parquet exports, and the conversion counts behind the lift chart."""

from __future__ import annotations

import csv
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from kafka import KafkaConsumer, KafkaProducer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from consumers.mart.charts import conversions_by_rule, figures
from consumers.mart.export import export_mart
from consumers.mart.sink import MODELS, MartWorker, rebuild
from consumers.mart.store import MART_TABLES, MartBatch, store_batch
from infra.broker import EmbeddedBroker
from infra.db import MartErasure, MartEvent, MartMessage, MartTask
from infra.kafka import ConsumerSettings
from schemas.events import (
    AnalyticsAction,
    AnalyticsMessage,
    AnalyticsNudge,
    AnalyticsRecord,
    AnalyticsTask,
)
from tests.integration.running import Running
from tests.mart_records import KEY_ID, erased, person_of, simulated_people
from tests.polling import wait_until

START = datetime(2026, 3, 2, tzinfo=UTC)
SHORT_JOIN = ConsumerSettings(session_timeout_ms=6_000)


def records(people: int = 30, seed: int = 11) -> list[AnalyticsRecord]:
    return list(simulated_people(people, START, 56, seed=seed))


def batch_of(found: list[AnalyticsRecord]) -> MartBatch:
    batch = MartBatch()
    for record in found:
        batch.add(record)
    return batch


def snapshot(sessions: sessionmaker[Session]) -> dict[str, list[tuple[Any, ...]]]:
    """Every mart table's rows, in key order."""
    with sessions() as session:
        tables: dict[str, list[tuple[Any, ...]]] = {}
        for model in (*MART_TABLES, MartErasure):
            table: Any = model.__table__
            statement = select(*table.columns).order_by(*table.primary_key.columns)
            tables[table.name] = [tuple(row) for row in session.execute(statement)]
        return tables


def store(sessions: sessionmaker[Session], found: list[AnalyticsRecord]) -> dict[str, int]:
    with sessions.begin() as session:
        return store_batch(session, batch_of(found))


def test_storing_is_idempotent_and_order_does_not_matter(
    sessions: sessionmaker[Session],
) -> None:
    found = records(people=10)
    first = store(sessions, found)
    assert first["mart_events"] == sum(isinstance(r, AnalyticsAction) for r in found)
    before = snapshot(sessions)
    assert store(sessions, found) == dict.fromkeys(first, 0)  # a repeat changes nothing
    assert snapshot(sessions) == before

    with sessions.begin() as session:  # the same records, newest first, one at a time
        for table in MART_TABLES:
            session.query(table).delete()
    for record in reversed(found):
        store(sessions, [record])
    assert snapshot(sessions) == before


def test_a_status_before_its_nudge_and_an_outcome_before_its_task_end_the_same(
    sessions: sessionmaker[Session],
) -> None:
    person = person_of(1, 1)
    common = {"person": person, "key_id": KEY_ID}
    nudge = AnalyticsNudge(
        event_id=uuid.uuid4(),
        event_time=START,
        nudge_id="n-1",
        rule="welcome-email",
        channel="email",
        template="welcome",
        holdout=False,
        cause_event_id=uuid.uuid4(),
        **common,
    )
    sent, delivered = (
        AnalyticsMessage(
            event_id=uuid.uuid4(),
            event_time=START + timedelta(minutes=m),
            nudge_id="n-1",
            channel="email",
            rule="welcome-email",
            status=status,
            **common,
        )
        for m, status in ((1, "sent"), (2, "delivered"))
    )
    task = AnalyticsTask(
        event_id=uuid.uuid4(),
        event_time=START,
        task_id="t-1",
        kind="call",
        rule="first-meeting-follow-up",
        priority="high",
        holdout=False,
        due_at=START + timedelta(days=2),
        area="Hackney",
        cause_event_id=uuid.uuid4(),
        **common,
    )
    no_answer, reached = (
        AnalyticsAction(
            event_id=uuid.uuid4(),
            event_time=START + timedelta(hours=h),
            type="task.outcome",
            task_id="t-1",
            outcome=outcome,
            **common,
        )
        for h, outcome in ((1, "no_answer"), (30, "reached_committed"))
    )
    for record in (delivered, reached, sent, no_answer, nudge, task):
        store(sessions, [record])
    with sessions() as session:
        message = session.get(MartMessage, "n-1")
        follow_up = session.get(MartTask, "t-1")
    assert message is not None and follow_up is not None
    assert (message.rule, message.template, message.holdout) == ("welcome-email", "welcome", False)
    assert (message.requested_at, message.status, message.status_at) == (
        START,
        "delivered",
        START + timedelta(minutes=2),
    )
    assert (follow_up.kind, follow_up.priority, follow_up.outcome) == (
        "call",
        "high",
        "reached_committed",
    )
    assert follow_up.outcome_at == START + timedelta(hours=30)


def test_an_erasure_deletes_the_person_everywhere_and_keeps_nothing_later(
    sessions: sessionmaker[Session],
) -> None:
    found = records(people=12)
    gone = person_of(11, 0)
    theirs = [r for r in found if r.person == gone]
    assert theirs
    store(sessions, [r for r in found if r.person != gone][:50] + theirs)
    store(sessions, [erased(gone)])
    store(sessions, found)  # every record again, theirs arriving after the erasure
    tables = snapshot(sessions)
    for name, rows in tables.items():
        if name == "mart_erasures":
            assert [row[0] for row in rows] == [gone]
        else:
            assert rows and all(gone not in row for row in rows), name
    with sessions() as session:
        people = set(session.scalars(select(MartEvent.person)))
    assert len(people) == 11


def test_exports_hold_every_row_of_each_table(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    store(sessions, records(people=15))
    tables = snapshot(sessions)
    with sessions() as session:
        as_csv = export_mart(session, tmp_path / "csv", "csv")
        as_parquet = export_mart(session, tmp_path / "parquet", "parquet")
    assert [e.table for e in as_csv] == [m.__tablename__ for m in MART_TABLES]
    for exported in as_csv:
        with exported.path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == exported.rows == len(tables[exported.table]) > 0
    events = {row[0] for row in tables["mart_events"]}
    with (tmp_path / "csv" / "mart_events.csv").open(newline="") as handle:
        assert {uuid.UUID(row["event_id"]) for row in csv.DictReader(handle)} == events
    for exported in as_parquet:
        table = pq.read_table(exported.path)
        assert table.num_rows == exported.rows == len(tables[exported.table])
    days = pq.read_table(tmp_path / "parquet" / "mart_supporter_days.parquet").to_pylist()
    stored = tables["mart_supporter_days"]
    assert [(d["person"], d["day"], d["rung"], d["score"], d["as_of"]) for d in days] == [
        (person, day, rung, score, as_of) for person, day, _, rung, score, as_of in stored
    ]
    with pytest.raises(ValueError, match="format"), sessions() as session:
        export_mart(session, tmp_path / "x", "xlsx")


def test_conversion_counts_a_next_step_within_fourteen_days_only(
    sessions: sessionmaker[Session],
) -> None:
    """Four people nudged by one rule, two held out; steps on day 3 (counts), day 20 (too
    late), before the nudge (does not count) and a click (not a step)."""
    rows: list[AnalyticsRecord] = []
    plan = [  # (held out, what they did, days after the nudge)
        (False, "event.rsvp", 3),
        (False, "petition.signed", 20),
        (False, "event.attended", -1),
        (False, "email.clicked", 2),
        (True, "event.attended", 13.9),
        (True, None, 0),
    ]
    for n, (held, step, days) in enumerate(plan):
        common = {"person": person_of(5, n), "key_id": KEY_ID}
        rows.append(
            AnalyticsNudge(
                event_id=uuid.uuid4(),
                event_time=START,
                nudge_id=f"n-{n}",
                rule="rule-a",
                channel="sms",
                template="t",
                holdout=held,
                cause_event_id=uuid.uuid4(),
                **common,
            )
        )
        if step:
            rows.append(
                AnalyticsAction(
                    event_id=uuid.uuid4(),
                    event_time=START + timedelta(days=days),
                    type=step,  # type: ignore[arg-type]
                    **common,
                )
            )
    store(sessions, rows)
    with sessions() as session:
        (rule,) = conversions_by_rule(session)
        charts = {f.id: f for f in figures(session)}
    assert (rule["rule"], rule["nudged"], rule["nudged_converted"]) == ("rule-a", 4, 1)
    assert (rule["held_out"], rule["held_out_converted"]) == (2, 1)
    assert rule["lift"] == pytest.approx(0.25 - 0.5)
    assert rule["low"] < rule["lift"] < rule["high"]
    assert charts["lift"].marks == 1


# --- the sink worker on the embedded broker ----------------------------------------------


@pytest.fixture
def analytics_topics(tmp_topic: Callable[..., str]) -> dict[str, type[AnalyticsRecord]]:
    """A topic of this test's own for each analytics topic (the catalogue's are shared)."""
    return {tmp_topic(name.split(".")[1], 2): model for name, model in MODELS.items()}


def publish(bootstrap: str, topics: dict[str, type[AnalyticsRecord]], found: list[Any]) -> None:
    by_model = {model: topic for topic, model in topics.items()}
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        for record in found:
            if isinstance(record, tuple):  # (topic, raw bytes): a malformed record
                producer.send(record[0], key=b"x", value=record[1])
                continue
            value = record.model_dump_json().encode()
            producer.send(by_model[type(record)], key=record.key().encode(), value=value)
        producer.flush()
    finally:
        producer.close()


def dead_letters_from(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(
        "deadletter",
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=1500,
    )
    try:
        letters = [json.loads(m.value) for m in consumer]
    finally:
        consumer.close()
    return [letter for letter in letters if letter["source_topic"] == topic]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_sink_keeps_the_mart_and_a_rebuild_from_the_topics_equals_it(
    broker: EmbeddedBroker,
    sessions: sessionmaker[Session],
    analytics_topics: dict[str, type[AnalyticsRecord]],
    group_id: str,
) -> None:
    found: list[Any] = records(people=25)
    gone = person_of(11, 3)
    found.append(erased(gone))
    actions = next(t for t, m in analytics_topics.items() if m is AnalyticsAction)
    found.append((actions, b'{"event_id": "not a uuid"}'))
    nul = next(r for r in found if isinstance(r, AnalyticsAction)).model_copy(
        update={"event_id": uuid.uuid4(), "area": "Hack\x00ney"}
    )
    found.append((actions, nul.model_dump_json().encode()))
    publish(broker.bootstrap, analytics_topics, found)
    expected_events = len(
        {r.event_id for r in found if isinstance(r, AnalyticsAction) and r.person != gone}
    )

    worker = MartWorker(
        broker.bootstrap,
        sessions,
        group_id=group_id,
        consumer_settings=SHORT_JOIN,
        models=analytics_topics,
    )
    running = Running(worker)
    try:

        def events_stored() -> bool:
            with sessions() as session:
                return len(session.scalars(select(MartEvent.event_id)).all()) == expected_events

        wait_until("the mart's events", events_stored, 60, 0.2)
        letters = wait_until(
            "the malformed records' dead letters",
            lambda: len(now := dead_letters_from(broker.bootstrap, actions)) == 2 and now,
            30,
            0.5,
        )
    finally:
        running.stop()
    assert {letter["consumer"] for letter in letters} == {"mart"}
    assert sorted("NUL" in letter["error"] for letter in letters) == [False, True]
    assert any("event_id" in letter["error"] for letter in letters)
    kept = snapshot(sessions)
    assert kept["mart_erasures"] == [(gone, kept["mart_erasures"][0][1])]
    assert all(gone not in row for row in kept["mart_events"])

    done = rebuild(broker.bootstrap, sessions, analytics_topics)
    assert (done.records, done.refused) == (len(found), 2)
    assert snapshot(sessions) == kept


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_engage_mart_export_writes_a_file_per_table(
    sessions: sessionmaker[Session],
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from engage import cli

    store(sessions, records(people=6))
    counts = {name: len(rows) for name, rows in snapshot(sessions).items()}
    monkeypatch.setenv("ENGAGE_HOME", str(tmp_path))
    monkeypatch.setenv("ENGAGE_DATABASE_URL", database_url)
    monkeypatch.setenv("ENGAGE_LOG_LEVEL", "warning")
    out = tmp_path / "export"
    assert cli.main(["mart", "export", "--format", "parquet", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t") for line in lines] == [
        [str(out / f"{m.__tablename__}.parquet"), f"{counts[m.__tablename__]} rows"]
        for m in MART_TABLES
    ]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_engage_mart_rebuild_reads_the_catalogue_topics(
    broker: EmbeddedBroker,
    sessions: sessionmaker[Session],
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """On the session's broker, whose analytics topics other tests may also have written to:
    this test's people are in the rebuilt mart, and the summary counts what was read."""
    from engage import cli

    mine = records(people=3, seed=99)
    publish(broker.bootstrap, dict(MODELS), mine)
    monkeypatch.setenv("ENGAGE_HOME", str(tmp_path))
    monkeypatch.setenv("ENGAGE_DATABASE_URL", database_url)
    monkeypatch.setenv("ENGAGE_KAFKA_BOOTSTRAP", broker.bootstrap)
    monkeypatch.setenv("ENGAGE_LOG_LEVEL", "warning")
    assert cli.main(["mart", "rebuild", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["records"] >= len(mine)
    with sessions() as session:
        people = set(session.scalars(select(MartEvent.person)))
    assert {r.person for r in mine} <= people


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_charts_page_of_an_empty_mart_says_so(api: str) -> None:
    import httpx

    page = httpx.get(f"{api}/charts", timeout=30)
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for empty in ("No scores in the mart yet.", "No nudges or tasks in the mart yet."):
        assert empty in page.text
    assert page.text.count('data-marks="0"') == 4
