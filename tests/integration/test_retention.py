"""Retention (`engage retention apply`, and `engage up` on its schedule), on both databases:
what is past its period goes from the ledger and every table that derives from it, what is
within it stays; the newest consent is never deleted and is restated on the log while the
supporter is active; a dry run changes nothing and counts exactly; a second run finds nothing;
a replay of what remains decides nothing the consumers do not hold; topics get the settings'
``retention.ms``; the supervisor applies it at start and every ``retention_check_hours``."""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from kafka.admin import ConfigResource, ConfigResourceType
from pydantic import TypeAdapter
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from consumers.repository import store_nudges, store_scores, store_tasks, stored_outputs
from engage.cli import main
from engage.processes import Supervisor
from engage.retention import apply_retention
from engage.wiring import engine_for
from infra.broker import EmbeddedBroker
from infra.consent import newest_consents
from infra.db import (
    Base,
    ConsentRecord,
    DeadLetterRedrive,
    FollowUpTask,
    LedgerEvent,
    Nudge,
    OutboxMessage,
    SupporterScore,
    TaskEvent,
    WebhookReceipt,
)
from infra.outbox import ledger_row
from infra.settings import Settings
from infra.topics import admin_client, ensure_topics
from producers.ledger import ingest_events, record_events
from producers.simulator import generate_events
from schemas.catalogue import DAY_MS, TopicSpec, with_retention
from schemas.events import (
    INPUT_EVENT_TYPES,
    ConsentChanged,
    EngagementScored,
    Event,
    EventAttended,
    IngestEvent,
    MessageStatus,
    NudgeRequested,
    PetitionSigned,
    SupporterErased,
    SupporterSignup,
    TaskCreated,
)
from streams.engagement import SupporterState
from streams.replay import Stored, compare_with_stored, in_fold_order, ledger_records, replay
from tests.factories import consent_record, nudge_request

NOW = datetime(2027, 6, 1, 12, tzinfo=UTC)


def new_id() -> str:
    return f"sup_{uuid.uuid4().hex}"


@dataclass
class Store:
    """Who is in the store built by ``fill``, and the events that matter."""

    now: datetime
    active: str  # signed up 800 days ago, came to a meeting 790 days ago and 10 days ago
    lapsed: str  # nothing for 790 days
    recent: str  # signed up 100 days ago
    superseded: str  # consent records only, six years and more old
    active_signup: uuid.UUID
    active_recent: uuid.UUID  # the meeting 10 days ago
    lapsed_signup: uuid.UUID

    def ago(self, days: float) -> datetime:
        return self.now - timedelta(days=days)


def _signup(sid: str, at: datetime, **consent: bool) -> SupporterSignup:
    return SupporterSignup(
        event_time=at, supporter_id=sid, source="form", consent_wording="v1", **consent
    )


def _attended(sid: str, at: datetime) -> EventAttended:
    return EventAttended(event_time=at, supporter_id=sid, meeting_id="m-1", meeting_title="Rent")


def _record(session: Session, event: Event) -> uuid.UUID:
    """Through the ingest ledger, accepted when it happened (consent recorded with it)."""
    record_events(session, [event], event.event_time)
    return event.event_id


def fill(sessions: sessionmaker[Session], now: datetime = NOW) -> Store:
    """Four supporters, their events, nudges, outbox copies, tasks and scores, a webhook
    receipt and a re-driven letter's note on each side of their retention (the defaults)."""
    store = Store(
        now, new_id(), new_id(), new_id(), new_id(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    )
    a, lapsed, recent = store.active, store.lapsed, store.recent
    with sessions.begin() as session:
        store.active_signup = _record(
            session, _signup(a, store.ago(800), consent_email=True, consent_sms=True)
        )
        first_meeting = _record(session, _attended(a, store.ago(790)))
        store.active_recent = _record(session, _attended(a, store.ago(10)))
        _record(session, PetitionSigned(event_time=store.ago(5), supporter_id=a, petition_id="p"))
        _record(
            session,
            ConsentChanged(
                event_time=store.ago(20),
                supporter_id=a,
                channel="email",
                granted=True,
                source="form",
            ),
        )
        store.lapsed_signup = _record(session, _signup(lapsed, store.ago(900), consent_email=True))
        _record(
            session, PetitionSigned(event_time=store.ago(790), supporter_id=lapsed, petition_id="p")
        )
        _record(session, _signup(recent, store.ago(100), consent_email=True))
        session.add(ledger_row(_status(lapsed, store.ago(795)), store.ago(795)))
        session.add(
            ledger_row(
                SupporterErased(event_time=store.ago(1000), supporter_id=new_id()), store.ago(1000)
            )
        )
        session.add(consent_record(store.superseded, "email", store.ago(2300)))
        session.add(consent_record(store.superseded, "email", store.ago(2250), granted=False))
        store_nudges(
            session,
            [
                _nudge(f"welcome:{a}", a, store.ago(800), store.active_signup),
                _nudge(f"sorry-we-missed-you:{a}:52", a, store.ago(790), first_meeting),
                _nudge(f"invite-signer:{a}:99", a, store.ago(790), first_meeting),
                _nudge(f"welcome:{lapsed}", lapsed, store.ago(900), store.lapsed_signup),
                _nudge(f"welcome:{recent}", recent, store.ago(100), uuid.uuid4()),
            ],
        )
        store_tasks(
            session,
            [
                _task(f"first-meeting-follow-up:{a}", a, store.ago(790), first_meeting),
                _task(
                    f"check-in-lapsing-regular:{a}:quiet-since-1", a, store.ago(740), uuid.uuid4()
                ),
                _task(f"one-to-one-new-regular:{a}:30", a, store.ago(10), store.active_recent),
            ],
        )
        claimed = session.get(Nudge, f"invite-signer:{a}:99")
        assert claimed is not None
        claimed.status = "sending"  # a sender holds it right now
        for nudge_id, created in (
            (f"welcome:{a}", store.ago(800)),
            (f"sorry-we-missed-you:{a}:52", store.ago(30)),
            (f"welcome:{recent}", store.ago(30)),
        ):
            session.add(
                OutboxMessage(
                    nudge_id=nudge_id,
                    channel="email",
                    to_address="x@example.org",
                    body="Hi",
                    created_at=created,
                )
            )
        store_scores(
            session,
            [
                _score(a, store.ago(5)),
                _score(lapsed, store.ago(790)),
                _score(recent, store.ago(100)),
            ],
        )
        for receipt, at in (("old", store.ago(40)), ("new", store.ago(1))):
            session.add(WebhookReceipt(provider="sendgrid", receipt_id=receipt, received_at=at))
        for letter, at in (("deadletter:0:1", store.ago(100)), ("deadletter:0:2", store.ago(1))):
            session.add(
                DeadLetterRedrive(letter_id=letter, redriven_at=at, target_topic="petition.signed")
            )
    return store


def _status(sid: str, at: datetime) -> MessageStatus:
    return MessageStatus(
        event_time=at, nudge_id=f"welcome:{sid}", supporter_id=sid, channel="email", status="sent"
    )


def _nudge(nudge_id: str, sid: str, at: datetime, cause: uuid.UUID) -> NudgeRequested:
    rule = nudge_id.split(":")[0]
    return nudge_request(nudge_id, sid, "email", at, rule=rule).model_copy(
        update={"cause_event_id": cause, "context": {"petition_title": "Fair rents"}}
    )


def _task(task_id: str, sid: str, at: datetime, cause: uuid.UUID) -> TaskCreated:
    return TaskCreated(
        event_time=at,
        task_id=task_id,
        supporter_id=sid,
        kind=task_id.split(":")[0],
        reason="follow up",
        due_at=at + timedelta(days=2),
        rule=task_id.split(":")[0],
        cause_event_id=cause,
    )


def _score(sid: str, at: datetime) -> EngagementScored:
    return EngagementScored(
        event_time=at,
        supporter_id=sid,
        score=12.5,
        rung="attendee",
        cause_event_id=uuid.uuid4(),
        half_life_days=90,
    )


def every_row(sessions: sessionmaker[Session]) -> str:
    with sessions() as session:
        return "\n".join(
            repr(tuple(row))
            for table in Base.metadata.sorted_tables
            for row in session.execute(select(table).order_by(*table.primary_key)).all()
        )


def keys(sessions: sessionmaker[Session], column: Any) -> set[Any]:
    with sessions() as session:
        return set(session.scalars(select(column)))


def test_what_is_past_retention_goes_and_what_is_within_it_stays(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    store = fill(sessions)
    a, lapsed, recent = store.active, store.lapsed, store.recent

    result = apply_retention(sessions, settings, NOW)

    assert result.log == {
        "message.status": 1,
        "event.attended": 1,
        "petition.signed": 1,
        "supporter.signup": 2,
    }
    assert result.rows == {
        "consent_restated": 1,
        "ledger": 5,
        "outbox": 2,
        "nudges": 2,
        "task_events": 1,
        "tasks": 1,
        "supporter_scores": 1,
        "consent": 1,
        "webhook_receipts": 1,
        "deadletter_redrives": 1,
    }
    with sessions() as session:
        left = session.execute(select(LedgerEvent.key, LedgerEvent.topic)).all()
    assert {key for key, _ in left} >= {a, recent}
    assert lapsed not in {key for key, _ in left}  # the log has forgotten them
    assert any(topic == SupporterErased.topic for _, topic in left)  # kept forever
    assert keys(sessions, Nudge.nudge_id) == {
        f"welcome:{a}",  # once per supporter, and they are still in the log
        f"invite-signer:{a}:99",  # a sender holds it
        f"welcome:{recent}",
    }
    assert keys(sessions, FollowUpTask.task_id) == {
        f"first-meeting-follow-up:{a}",
        f"one-to-one-new-regular:{a}:30",
    }
    assert keys(sessions, TaskEvent.task_id) == keys(sessions, FollowUpTask.task_id)
    assert keys(sessions, OutboxMessage.nudge_id) == {f"welcome:{recent}"}
    assert keys(sessions, SupporterScore.supporter_id) == {a, recent}
    assert keys(sessions, WebhookReceipt.receipt_id) == {"new"}
    assert keys(sessions, DeadLetterRedrive.letter_id) == {"deadletter:0:2"}


def test_the_newest_consent_is_kept_and_restated_on_the_log_while_they_are_active(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    store = fill(sessions)

    apply_retention(sessions, settings, NOW)

    with sessions() as session:
        newest = newest_consents(
            session, [store.active, store.lapsed, store.recent, store.superseded]
        )
        restated = newest[(store.active, "sms")]  # from the signup, 800 days ago
        carrier = session.scalars(
            select(LedgerEvent).where(LedgerEvent.event_id == restated.event_id)
        ).one()
        in_log = set(session.scalars(select(LedgerEvent.event_id)))
        records = session.execute(
            select(ConsentRecord.supporter_id, ConsentRecord.recorded_at)
        ).all()
    assert carrier.topic == ConsentChanged.topic and carrier.accepted_at == NOW
    event = ConsentChanged.model_validate_json(carrier.payload)
    assert (event.supporter_id, event.channel, event.granted) == (store.active, "sms", True)
    assert event.event_time == restated.recorded_at == store.ago(800)
    assert (event.source, event.wording_version) == ("retention:form", "v1")
    email = newest[(store.active, "email")]  # changed 20 days ago: still on the log as it was
    assert email.recorded_at == store.ago(20) and email.event_id in in_log
    lapsed = newest[(store.lapsed, "email")]  # the proof stays; the log forgets them
    assert lapsed.event_id == store.lapsed_signup and lapsed.event_id not in in_log
    assert not newest[(store.superseded, "email")].granted  # the newest, however old
    assert (store.superseded, store.ago(2300)) not in records  # superseded six years ago
    assert (store.active, store.ago(800)) in records  # superseded, within six years
    assert len(records) == 6


def test_a_dry_run_changes_nothing_and_counts_what_a_run_deletes(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    fill(sessions)
    before = every_row(sessions)

    dry = apply_retention(sessions, settings, NOW, dry_run=True)

    assert every_row(sessions) == before
    assert dry.dry_run and dry.rows["ledger"] == 5
    done = apply_retention(sessions, settings, NOW)
    assert (done.rows, done.log) == (dry.rows, dry.log)


def test_applying_it_again_finds_nothing_more(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    fill(sessions)
    apply_retention(sessions, settings, NOW)
    after_first = every_row(sessions)

    again = apply_retention(sessions, settings, NOW + timedelta(hours=1))

    assert set(again.rows.values()) == {0} and again.log == {}
    assert every_row(sessions) == after_first


def test_zero_days_keeps_everything(sessions: sessionmaker[Session], settings: Settings) -> None:
    fill(sessions)
    before = every_row(sessions)
    forever = settings.model_copy(
        update={name: 0 for name in type(settings).model_fields if name.endswith("_days")}
    )

    result = apply_retention(sessions, forever, NOW)

    assert set(result.rows.values()) == {0} and result.cutoffs == {}
    assert every_row(sessions) == before


# --- a replay of what remains: three simulated years, folded as the live stream would ----------

_INGEST: TypeAdapter[Any] = TypeAdapter(IngestEvent)


def simulate_years(sessions: sessionmaker[Session], supporters: int, years: int) -> None:
    """Simulated traffic through the ingest ledger, a day's events accepted at the day's end;
    then the live stream's outputs (every event folded as it arrives, the timer ticked daily)
    stored as the consumers store them."""
    days = 365 * years
    by_day: dict[datetime, list[Event]] = defaultdict(list)
    for payload in generate_events(
        supporters, seed=11, start=NOW - timedelta(days=days), days=days
    ):
        event = _INGEST.validate_python(payload)
        by_day[event.event_time.replace(hour=23, minute=59, second=0, microsecond=0)].append(event)
    for day in sorted(by_day):
        with sessions.begin() as session:
            ingest_events(session, by_day[day], day + timedelta(minutes=5), "sim-key")
    # Someone who came back: their first meeting leaves the log, so their second looks like a
    # first to a replay (the rule "first-meeting-follow-up" fires once per supporter).
    back = new_id()
    with sessions.begin() as session:
        for event in (
            _signup(back, NOW - timedelta(days=800), consent_email=True),
            _attended(back, NOW - timedelta(days=790)),
            _attended(back, NOW - timedelta(days=100)),
        ):
            _record(session, event)
    engine = engine_for()
    states: dict[str, SupporterState] = {}
    outputs: list[Event] = []
    ticked: int | None = None
    for topic, value, arrived in in_fold_order(ledger_records(sessions)):
        assert arrived is not None
        day = int(arrived // 86_400)
        for tick in range((ticked or day) + 1, day + 1):
            outputs += engine.tick(states, tick * 86_400)
        ticked = day
        event = INPUT_EVENT_TYPES[topic].model_validate_json(value)
        outputs += engine.apply(states.setdefault(event.key(), SupporterState()), event, arrived)
    outputs += engine.tick(states, NOW.timestamp())
    scores = {o.supporter_id: o for o in outputs if isinstance(o, EngagementScored)}
    with sessions.begin() as session:
        store_nudges(session, [o for o in outputs if isinstance(o, NudgeRequested)])
        store_tasks(session, [o for o in outputs if isinstance(o, TaskCreated)])
        store_scores(session, list(scores.values()))


def replayed(sessions: sessionmaker[Session]) -> dict[str, Any]:
    result = replay(engine_for(), ledger_records(sessions), NOW.timestamp())
    with sessions() as session:
        stored = Stored(*stored_outputs(session))
    return compare_with_stored(result, stored, 90.0)


def test_a_replay_of_what_remains_decides_nothing_the_consumers_do_not_hold(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Three years, the first gone: the rules that look back (first meeting, has never come)
    see a shorter history, and decide nothing that is not stored already. Scores built with
    deleted events differ from the replay's (docs/privacy.md says so)."""
    simulate_years(sessions, supporters=150, years=3)
    assert replayed(sessions)["nudges_new"] == 0

    result = apply_retention(sessions, settings, NOW)

    assert result.rows["ledger"] > 0 and result.rows["nudges"] > 0 and result.rows["tasks"] > 0
    report = replayed(sessions)
    assert (report["nudges_new"], report["tasks_new"]) == (0, 0)
    assert report["nudges_decided"] > 0 and report["tasks_decided"] > 0


# --- the command, the topics and the schedule ----------------------------------------------


@pytest.fixture
def engage_cli(database_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``engage ...`` in-process on the test's database: (exit code, stdout). Not capsys: the
    CLI binds the logger to the stderr of the moment, which capsys closes after the test."""
    monkeypatch.setenv("ENGAGE_HOME", str(tmp_path))
    monkeypatch.setenv("ENGAGE_DATABASE_URL", database_url)
    monkeypatch.setenv("ENGAGE_LOG_LEVEL", "warning")
    saved = structlog.get_config()

    def run(*args: str) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(list(args))
        return code, out.getvalue()

    yield run
    structlog.configure(**saved)


def test_the_command_counts_on_a_dry_run_then_deletes(
    sessions: sessionmaker[Session], engage_cli: Any
) -> None:
    store = fill(sessions, datetime.now(UTC))

    code, printed = engage_cli("retention", "apply", "--dry-run", "--json")
    assert code == 0
    dry = json.loads(printed)
    assert dry["dry_run"] and dry["rows"]["ledger"] == 5
    assert store.lapsed in keys(sessions, LedgerEvent.key)

    code, printed = engage_cli("retention", "apply")
    assert code == 0
    assert "deleted" in printed and "supporter.signup" in printed
    assert "embedded broker" in printed  # ENGAGE_KAFKA_BOOTSTRAP unset: says what stays
    assert store.lapsed not in keys(sessions, LedgerEvent.key)


def _broker_retention(bootstrap: str, names: list[str]) -> dict[str, int]:
    admin = admin_client(bootstrap)
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names],
            config_filter="all",
        )
    finally:
        admin.close()
    return {name: int(c["retention.ms"]["value"]) for name, c in described["topic"].items()}


def test_topics_get_the_settings_retention_when_made_and_when_it_changes(
    broker: EmbeddedBroker,
) -> None:
    name = f"test.retention.{uuid.uuid4().hex[:12]}"
    spec = TopicSpec(name, SupporterSignup, "a copy of supporter.signup")
    (kept_a_year,) = with_retention({"events": 365}, (spec,))
    (forever,) = with_retention({"events": 0}, (spec,))

    assert ensure_topics(broker.bootstrap, 1, (kept_a_year,)) == [name]
    assert _broker_retention(broker.bootstrap, [name]) == {name: 365 * DAY_MS}
    assert ensure_topics(broker.bootstrap, 1, (forever,)) == []  # there already: changed
    assert _broker_retention(broker.bootstrap, [name]) == {name: -1}


def test_the_catalogue_topics_carry_the_default_retention(broker: EmbeddedBroker) -> None:
    """The session's broker was given the catalogue by ``ensure_topics`` with no settings."""
    found = _broker_retention(
        broker.bootstrap, ["supporter.signup", "deadletter", "supporter.erased"]
    )
    assert found == {
        "supporter.signup": 730 * DAY_MS,
        "deadletter": 90 * DAY_MS,
        "supporter.erased": -1,
    }


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now.timestamp()

    def __call__(self) -> float:
        return self.now


def test_up_applies_it_when_due_and_every_check_interval(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """The supervisor's own ``check`` (twice a second under `engage up`), with a clock moved
    by hand: due at once, not again within ``retention_check_hours``, then again."""
    store = fill(sessions)
    clock = Clock(NOW)
    supervisor = Supervisor(settings.model_copy(update={"retention_check_hours": 24.0}), clock)
    try:
        supervisor.check()
        assert store.lapsed not in keys(sessions, LedgerEvent.key)
        with sessions.begin() as session:  # an event that passes retention an hour from now
            late = _signup(new_id(), NOW - timedelta(days=730) + timedelta(hours=1))
            record_events(session, [late], late.event_time)

        clock.now += 23 * 3600
        supervisor.check()
        assert late.event_id in keys(sessions, LedgerEvent.event_id)

        clock.now += 3600
        supervisor.check()
        assert late.event_id not in keys(sessions, LedgerEvent.event_id)
    finally:
        supervisor.stop()


def test_up_restarts_its_embedded_broker_once_retention_has_deleted_events(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """The in-memory log still holds what the ledger no longer does: a new broker is filled
    from the pruned ledger (every row to be published again), and topics made on it. A run that
    deletes no event leaves the broker alone."""
    fill(sessions)
    with sessions.begin() as session:
        session.execute(update(LedgerEvent).values(published=True))
    clock = Clock(NOW)
    supervisor = Supervisor(settings, clock)
    supervisor.logs.mkdir(parents=True)
    supervisor.broker = EmbeddedBroker(log_path=supervisor.logs / "broker.log").start()
    supervisor.bootstrap = supervisor.broker.bootstrap
    try:
        first = supervisor.broker.process
        supervisor.check()

        assert supervisor.broker.process is not first and supervisor.broker.alive()
        assert keys(sessions, LedgerEvent.published) == {False}  # the relay publishes them again
        admin = admin_client(supervisor.bootstrap)
        try:
            assert "supporter.signup" in admin.list_topics()
        finally:
            admin.close()
        second = supervisor.broker.process
        clock.now += 24 * 3600
        supervisor.check()
        assert supervisor.broker.process is second
    finally:
        supervisor.stop()
