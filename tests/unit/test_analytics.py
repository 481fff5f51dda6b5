"""The analytics mapping (streams/analytics.py): each operational record's analytics record,
the pseudonym, rotation, and what never reaches an analytics topic."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.catalogue import ANALYTICS_TOPICS, INPUT_TOPICS
from schemas.events import (
    ANALYTICS_EVENT_TYPES,
    AnalyticsAction,
    AnalyticsErased,
    AnalyticsMessage,
    AnalyticsNudge,
    AnalyticsRecord,
    AnalyticsScore,
    AnalyticsTask,
    ConsentChanged,
    DeadLetter,
    EmailClicked,
    EngagementScored,
    Event,
    EventAttended,
    EventNoShow,
    EventRSVP,
    IdentityMerged,
    LadderChanged,
    MessageStatus,
    NudgeRequested,
    PetitionSigned,
    SupporterBrought,
    SupporterErased,
    SupporterSignup,
    TaskCreated,
    TaskOutcome,
    TrainingCompleted,
)
from streams.analytics import AnalyticsKey, analytics_record, pseudonym, pseudonymised_id

KEY = AnalyticsKey("analytics-test-key", "k1")
ROTATED = AnalyticsKey("another-key", "k2")
SID = "sup_" + "a1" * 16
OTHER = "sup_" + "b2" * 16
WHEN = datetime(2025, 3, 6, 21, 15, tzinfo=UTC)
CAUSE = uuid.UUID("0f4a6c2e-8b1d-4f3a-9c5e-7d2b4a6c8e0f")
NOTE = "Said to call her at work on 020 7946 0000"
NULL_FACTS = dict.fromkeys(
    (
        "district",
        "area",
        "source",
        "petition_id",
        "meeting_id",
        "role",
        "training",
        "task_id",
        "outcome",
        "commitment",
        "channel",
        "granted",
    )
)


def _sources() -> list[tuple[Event, dict[str, Any]]]:
    """Every type the analytics topics mirror, with the facts its record must carry."""
    common: dict[str, Any] = {"event_time": WHEN, "supporter_id": SID}
    where = {"district": "E8", "area": "Hackney"}
    return [
        (
            SupporterSignup(**common, **where, source="website", consent_email=True),
            {"type": "supporter.signup", **where, "source": "website"},
        ),
        (
            PetitionSigned(**common, **where, petition_id="clean-air", petition_title="Clean air"),
            {"type": "petition.signed", **where, "petition_id": "clean-air"},
        ),
        (
            EventRSVP(**common, **where, meeting_id="m-1", meeting_title="Housing night"),
            {"type": "event.rsvp", **where, "meeting_id": "m-1"},
        ),
        (
            EventAttended(**common, **where, meeting_id="m-1", role="host"),
            {"type": "event.attended", **where, "meeting_id": "m-1", "role": "host"},
        ),
        (
            EventNoShow(**common, district="N1", meeting_id="m-1"),
            {"type": "event.no_show", "district": "N1", "meeting_id": "m-1"},
        ),
        (
            TrainingCompleted(**common, training="one-to-ones"),
            {"type": "training.completed", "training": "one-to-ones"},
        ),
        (
            TaskOutcome(
                **common,
                task_id=f"first-meeting-follow-up:{SID}",
                outcome="reached_committed",
                commitment="host",
                notes=NOTE,
            ),
            {
                "type": "task.outcome",
                "task_id": f"first-meeting-follow-up:{pseudonym(KEY, SID)}",
                "outcome": "reached_committed",
                "commitment": "host",
            },
        ),
        (
            EmailClicked(**common, nudge_id=f"welcome:{SID}", url="https://example.org/?who=x"),
            {"type": "email.clicked"},
        ),
        (
            ConsentChanged(**common, channel="sms", granted=False, source="sms_stop"),
            {"type": "consent.changed", "channel": "sms", "granted": False, "source": "sms_stop"},
        ),
        (
            SupporterBrought(**common, brought_supporter_id=OTHER, meeting_id="m-1"),
            {"type": "supporter.brought", "meeting_id": "m-1"},
        ),
    ]


def _outputs() -> list[tuple[Event, type[AnalyticsRecord], dict[str, Any]]]:
    common: dict[str, Any] = {"event_time": WHEN, "supporter_id": SID, "cause_event_id": CAUSE}
    person = pseudonym(KEY, SID)
    return [
        (
            EngagementScored(
                **common, score=7.5, rung="attendee", previous_rung="signer", half_life_days=90
            ),
            AnalyticsScore,
            {"score": 7.5, "rung": "attendee", "previous_rung": "signer", "cause_event_id": CAUSE},
        ),
        (
            NudgeRequested(
                **common,
                nudge_id=f"thanks:{SID}:7",
                channel="sms",
                template="thanks",
                rule="thanks",
                context={"meeting_title": "Housing night"},
                holdout=True,
            ),
            AnalyticsNudge,
            {"nudge_id": f"thanks:{person}:7", "rule": "thanks", "holdout": True},
        ),
        (
            MessageStatus(
                event_time=WHEN,
                supporter_id=SID,
                nudge_id=f"thanks:{SID}:7",
                channel="sms",
                rule="thanks",
                status="skipped",
                reason_code="quiet_hours",
                reason="Quiet hours for SMS",
                provider="twilio",
            ),
            AnalyticsMessage,
            {"nudge_id": f"thanks:{person}:7", "status": "skipped", "reason_code": "quiet_hours"},
        ),
        (
            TaskCreated(
                **common,
                task_id=f"call:{SID}",
                kind="call",
                reason="Came to a first meeting",
                due_at=WHEN + timedelta(days=2),
                area="Hackney",
                rule="call",
                priority="high",
                holdout=True,
            ),
            AnalyticsTask,
            {
                "task_id": f"call:{person}",
                "kind": "call",
                "rule": "call",
                "priority": "high",
                "holdout": True,
                "due_at": WHEN + timedelta(days=2),
                "area": "Hackney",
            },
        ),
        (SupporterErased(event_time=WHEN, supporter_id=SID), AnalyticsErased, {}),
    ]


@pytest.mark.parametrize(
    ("source", "facts"), _sources(), ids=lambda v: v.topic if isinstance(v, Event) else ""
)
def test_each_input_type_becomes_an_action_with_its_facts(
    source: Event, facts: dict[str, Any]
) -> None:
    record = analytics_record(source.topic, source, KEY)

    assert isinstance(record, AnalyticsAction)
    assert record.topic == "analytics.actions"
    assert (record.event_id, record.event_time) == (source.event_id, source.event_time)
    assert (record.person, record.key_id) == (pseudonym(KEY, SID), "k1")
    assert record.model_dump(exclude={"event_id", "event_time", "person", "key_id"}) == {
        **NULL_FACTS,
        **facts,
    }


@pytest.mark.parametrize(
    ("source", "model", "facts"), _outputs(), ids=lambda v: v.topic if isinstance(v, Event) else ""
)
def test_each_output_type_becomes_its_analytics_record(
    source: Event, model: type[AnalyticsRecord], facts: dict[str, Any]
) -> None:
    record = analytics_record(source.topic, source.model_dump_json(), KEY)

    assert type(record) is model
    assert record.key() == record.person == pseudonym(KEY, SID)
    assert (record.event_id, record.event_time, record.key_id) == (
        source.event_id,
        source.event_time,
        "k1",
    )
    assert record.model_dump(include=set(facts)) == facts


def test_every_analytics_topic_and_every_mirrored_input_type_is_covered() -> None:
    mirrored = {source.topic for source, _ in _sources()}
    assert mirrored == set(INPUT_TOPICS) - {"identity.merged", "supporter.erased"}
    made = {model.topic for _, model, _ in _outputs()} | {"analytics.actions"}
    assert made == set(ANALYTICS_TOPICS) == set(ANALYTICS_EVENT_TYPES)


@pytest.mark.parametrize(
    "source",
    [
        IdentityMerged(
            event_time=WHEN, supporter_id=SID, role="survivor", survivor_id=SID, absorbed_id=OTHER
        ),
        LadderChanged(
            event_time=WHEN,
            supporter_id=SID,
            rung="attendee",
            previous_rung="signer",
            direction="up",
            reason="came",
            score=3.0,
        ),
        DeadLetter(
            event_time=WHEN,
            source_topic="petition.signed",
            partition=0,
            offset=1,
            error="bad",
            payload="{}",
            consumer="stream",
        ),
    ],
    ids=lambda e: e.topic,
)
def test_what_analysts_get_nothing_of(source: Event) -> None:
    assert analytics_record(source.topic, source, KEY) is None


def test_no_supporter_id_contact_detail_or_free_text_survives() -> None:
    """Every record, dumped as analysts read it, against everything the sources carried that
    names or describes the person; a version 1 record with contact details included."""
    legacy = json.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "event_time": WHEN.isoformat(),
            "type": "event.attended",
            "supporter_id": SID,
            "meeting_id": "m-1",
            "meeting_title": "Housing night",
            "email": "jo.bloggs@example.org",
            "phone": "+447911123456",
            "first_name": "Jo",
            "last_name": "Bloggs",
            "postcode": "E8 1AB",
            "brought_by_email": "amy@example.org",
        }
    )
    records = [analytics_record(s.topic, s, KEY) for s, _ in _sources()]
    records += [analytics_record(s.topic, s, KEY) for s, _, _ in _outputs()]
    from_legacy = analytics_record("event.attended", legacy, KEY)
    assert isinstance(from_legacy, AnalyticsAction) and from_legacy.district == "E8"
    forbidden = [
        SID,
        OTHER,
        SID.removeprefix("sup_"),
        NOTE,
        "example.org",
        "7911123456",
        "Jo",
        "Bloggs",
        "E8 1AB",
        "Housing night",
        "Clean air",
        "Came to a first meeting",
        "Quiet hours",
        "twilio",
    ]
    for record in [*records, from_legacy]:
        assert record is not None
        wire = record.model_dump_json()
        assert not set(json.loads(wire)) & {"supporter_id", "notes", "email", "phone", "url"}
        for value in forbidden:
            assert value not in wire, (record.topic, value)


def test_the_pseudonym_is_the_documented_hmac_and_rotation_changes_it() -> None:
    expected = hmac.new(b"analytics-test-key", SID.encode(), hashlib.sha256).hexdigest()[:32]
    assert pseudonym(KEY, SID) == f"p_{expected}"
    assert re.fullmatch(r"p_[0-9a-f]{32}", pseudonym(KEY, OTHER))
    assert pseudonym(KEY, SID) != pseudonym(KEY, OTHER)

    source = _sources()[0][0]
    before, after = (
        analytics_record(source.topic, source, KEY),
        analytics_record(source.topic, source, ROTATED),
    )
    assert before is not None and after is not None
    assert (before.key_id, after.key_id) == ("k1", "k2")
    assert before.person != after.person
    assert before.event_id == after.event_id  # the same source record, under another key


def test_one_supporter_has_one_pseudonym_across_every_topic_under_a_key() -> None:
    sources = [s for s, _ in _sources()] + [s for s, _, _ in _outputs()]
    people = {analytics_record(s.topic, s, KEY).person for s in sources}  # type: ignore[union-attr]
    assert people == {pseudonym(KEY, SID)}


def test_ids_inside_nudge_and_task_ids_are_pseudonymised_and_stay_joinable() -> None:
    assert pseudonymised_id(KEY, f"r:{SID}:{OTHER}") == (
        f"r:{pseudonym(KEY, SID)}:{pseudonym(KEY, OTHER)}"
    )
    assert pseudonymised_id(KEY, "sms-reply:SM123:no-id-here") == "sms-reply:SM123:no-id-here"
    _, nudge, message, _, _ = (analytics_record(s.topic, s, KEY) for s, _, _ in _outputs())
    assert isinstance(nudge, AnalyticsNudge) and isinstance(message, AnalyticsMessage)
    assert nudge.nudge_id == message.nudge_id


def test_after_an_erasure_only_the_erasure_itself_is_mirrored() -> None:
    erased = {SID}
    for source, _ in _sources():
        assert analytics_record(source.topic, source, KEY, erased) is None
    erasure = SupporterErased(event_time=WHEN, supporter_id=SID)
    record = analytics_record(erasure.topic, erasure, KEY, erased)
    assert isinstance(record, AnalyticsErased) and record.person == pseudonym(KEY, SID)


def test_a_record_that_does_not_fit_its_topic_is_refused_with_the_field() -> None:
    with pytest.raises(ValidationError, match="supporter_id"):
        analytics_record("petition.signed", b'{"event_time": "2025-03-06T21:15:00Z"}', KEY)
    with pytest.raises(ValidationError):
        analytics_record("engagement.scored", b"not json", KEY)


def test_the_key_is_never_shown() -> None:
    assert "analytics-test-key" not in repr(KEY)
    with pytest.raises(ValueError, match="empty"):
        AnalyticsKey("", "k1")
