"""The follow-up queue's pure rules, version 2 of task.outcome, training.completed, and what
they do on the default playbook's ladder: no I/O, a clock passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from consumers.organising.rules import (
    check_outcome,
    district,
    districts,
    outcome_effect,
    queue_order,
    retriggered,
)
from schemas.actions import KINDS, kinds_of
from schemas.events import EngagementScored, TaskOutcome, TrainingCompleted, TrainingIn
from streams.engagement import SupporterState
from tests.unit.engine_events import SID, at, attended, brought, default_engine, fold

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


# --- a task's life ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "attempts", "status", "due_at", "reopened"),
    [
        ("no_answer", 0, "open", NOW + timedelta(days=1), True),
        ("no_answer", 1, "done", None, False),
        ("reached_committed", 0, "done", None, False),
        ("reached_not_now", 1, "done", None, False),
        ("wrong_number", 0, "done", None, False),
        ("do_not_contact", 0, "done", None, False),
    ],
)
def test_what_an_outcome_does_to_its_task(
    outcome: Any, attempts: int, status: str, due_at: datetime | None, reopened: bool
) -> None:
    effect = outcome_effect(outcome, attempts, NOW)
    assert (effect.status, effect.due_at, effect.reopened) == (status, due_at, reopened)


def test_a_second_trigger_keeps_the_earlier_due_time_and_the_more_urgent_priority() -> None:
    later = retriggered("old", NOW, "high", "new", NOW + timedelta(days=3), "normal")
    sooner = retriggered("old", NOW, "low", "new", NOW - timedelta(hours=1), "normal")
    assert (later.reason, later.due_at, later.priority) == ("new", NOW, "high")
    assert (sooner.reason, sooner.due_at, sooner.priority) == (
        "new",
        NOW - timedelta(hours=1),
        "normal",
    )


def test_the_queue_puts_overdue_first_then_by_due_time_then_priority() -> None:
    tasks = [
        ("later-high", NOW + timedelta(hours=5), "high"),
        ("soon-low", NOW + timedelta(hours=1), "low"),
        ("soon-high", NOW + timedelta(hours=1), "high"),
        ("overdue-low", NOW - timedelta(days=2), "low"),
        ("overdue-high", NOW - timedelta(hours=1), "high"),
    ]
    ordered = sorted(tasks, key=lambda t: queue_order(t[1], t[2], t[0], NOW))
    assert [t[0] for t in ordered] == [
        "overdue-low",
        "overdue-high",
        "soon-high",
        "soon-low",
        "later-high",
    ]


@pytest.mark.parametrize(
    ("typed", "stored"), [("e1", "E1"), (" SW9 ", "SW9"), ("m14", "M14"), ("EC1A", "EC1A")]
)
def test_districts_are_stored_as_outward_codes(typed: str, stored: str) -> None:
    assert district(typed) == stored


@pytest.mark.parametrize("typed", ["E1 6AN", "1E", "", "ABC1", "E"])
def test_what_is_not_a_district_is_refused(typed: str) -> None:
    with pytest.raises(ValueError, match="not a postcode district"):
        district(typed)


def test_a_list_of_districts_keeps_each_once() -> None:
    assert districts("e8, E9,,e8") == ["E8", "E9"]


@pytest.mark.parametrize(
    ("outcome", "commitment", "note", "words"),
    [
        ("reached_committed", None, None, "commitment: one of"),
        ("reached_committed", "tea", None, "commitment: one of"),
        ("no_answer", "lead", None, "only with reached_committed"),
        ("no_answer", None, "x" * 281, "at most 280"),
        ("negative", None, None, "outcome: one of"),
    ],
)
def test_an_organisers_outcome_is_checked(
    outcome: str, commitment: str | None, note: str | None, words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        check_outcome(outcome, commitment, note)
    check_outcome("reached_committed", "lead", "x" * 280)  # the longest note is fine


# --- task.outcome version 2, training.completed -------------------------------------------------


def _outcome(**fields: Any) -> TaskOutcome:
    return TaskOutcome.model_validate(
        {"event_time": NOW, "supporter_id": SID, "task_id": "t-1", **fields}
    )


def test_a_version_1_outcome_is_read_unchanged_and_scores_as_before() -> None:
    old = '{"event_time": "2025-01-01T10:00:00Z", "supporter_id": "%s", "task_id": "t",'
    record = (old % SID) + ' "type": "task.outcome", "outcome": "positive", "notes": "Keen"}'
    event = TaskOutcome.model_validate_json(record)
    assert (event.outcome, event.commitment, event.notes) == ("positive", None, "Keen")
    assert kinds_of(event) == ("outcome.positive", [])
    (scored, *_) = default_engine().apply(SupporterState(), event)
    assert isinstance(scored, EngagementScored) and scored.score == 5.0


@pytest.mark.parametrize(
    ("fields", "kind", "points"),
    [
        ({"outcome": "reached_committed", "commitment": "meeting"}, "commitment.meeting", 5.0),
        ({"outcome": "reached_committed", "commitment": "lead"}, "commitment.lead", 10.0),
        ({"outcome": "reached_not_now"}, "outcome.not_now", 0.0),
        ({"outcome": "do_not_contact"}, "outcome.do_not_contact", 0.0),
        ({"outcome": "no_answer"}, "outcome.no_answer", 0.0),
    ],
)
def test_a_version_2_outcome_is_an_action_the_playbook_weighs(
    fields: dict[str, str], kind: str, points: float
) -> None:
    event = _outcome(**fields)
    assert kinds_of(event) == (kind, [])
    (scored, *_) = default_engine().apply(SupporterState(), event)
    assert isinstance(scored, EngagementScored) and scored.score == points


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"outcome": "reached_committed"}, "commitment"),
        ({"outcome": "no_answer", "commitment": "host"}, "commitment"),
        ({"outcome": "reached_committed", "commitment": "tea"}, "commitment"),
        ({"outcome": "great"}, "outcome"),
    ],
)
def test_a_commitment_goes_with_reached_committed_and_only_then(
    fields: dict[str, str], where: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        _outcome(**fields)
    assert [e["loc"] for e in refused.value.errors()] == [(where,)]


def test_new_action_kinds_are_appended_so_the_old_codes_stay() -> None:
    assert KINDS[:17][-1] == "sms.opted_out"
    assert KINDS[17:] == (
        "outcome.not_now",
        "outcome.do_not_contact",
        "commitment.meeting",
        "commitment.host",
        "commitment.bring_someone",
        "commitment.lead",
        "training.completed",
    )


def training(days: float) -> TrainingCompleted:
    return TrainingCompleted(event_time=at(days), supporter_id=SID, training="One-to-ones")


def test_a_leader_candidate_who_completes_a_training_is_a_leader() -> None:
    state = fold([attended(0), attended(1), attended(2), brought(3)])
    engine = default_engine()
    assert engine.playbook.rung_names[state.rung] == "leader_candidate"

    outputs = engine.apply(state, training(4), at(4).timestamp())

    assert engine.playbook.rung_names[state.rung] == "leader"
    moved = [o for o in outputs if o.topic == "ladder.changed"]
    assert [(o.previous_rung, o.rung) for o in moved] == [("leader_candidate", "leader")]  # type: ignore[attr-defined]


def test_a_training_alone_does_not_make_a_leader() -> None:
    state = fold([attended(0), training(1)])
    assert default_engine().playbook.rung_names[state.rung] == "attendee"


def test_a_regular_who_commits_to_host_is_a_leader_candidate() -> None:
    state = fold([attended(0), attended(1), attended(2)])
    promise = _outcome(outcome="reached_committed", commitment="host", event_time=at(3))
    fold([promise], state=state)
    assert default_engine().playbook.rung_names[state.rung] == "leader_candidate"


def test_the_ingest_model_of_a_training_names_the_supporter_by_id() -> None:
    posted = TrainingIn.model_validate(
        {"type": "training.completed", "event_time": NOW, "supporter_id": SID, "training": "x"}
    )
    assert posted.training == "x"
    with pytest.raises(ValidationError):
        TrainingIn.model_validate({"event_time": NOW, "email": "jo@example.org", "training": "x"})
