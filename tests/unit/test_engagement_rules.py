"""The three spine rules of streams/engagement.py, table-driven: what each event causes."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.events import (
    EngagementScored,
    Event,
    EventAttended,
    EventRSVP,
    NudgeRequested,
    PetitionSigned,
    SupporterSignup,
    TaskCreated,
    derived_event_id,
)
from streams.engagement import FOLLOW_UP_WITHIN, SupporterState, apply_event
from streams.scoring import DAY_S

SID = "sup_" + "b" * 32
HALF_LIFE = 90.0
T0 = datetime(2025, 3, 4, 19, 0, tzinfo=UTC)


def signup(hours: float = 0, **fields: Any) -> SupporterSignup:
    return SupporterSignup(**_base(hours), **fields)


def petition(hours: float = 0, **fields: Any) -> PetitionSigned:
    return PetitionSigned(**_base(hours), petition_id="clean-air", **fields)


def rsvp(hours: float = 0, **fields: Any) -> EventRSVP:
    return EventRSVP(**_base(hours), meeting_id="m-1", **fields)


def attended(hours: float = 0, **fields: Any) -> EventAttended:
    return EventAttended(**_base(hours), meeting_id="m-1", **fields)


def _base(hours: float) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4(),
        "event_time": T0 + timedelta(hours=hours),
        "supporter_id": SID,
        "email": "jo@example.org",
    }


def fold(history: list[Event]) -> SupporterState:
    state = SupporterState()
    for event in history:
        apply_event(state, event, HALF_LIFE)
    return state


def summary(outputs: list[Event]) -> list[tuple[str, ...]]:
    """(topic, rule, channel/kind) of each non-score output, in order."""
    out: list[tuple[str, ...]] = []
    for o in outputs:
        if isinstance(o, NudgeRequested):
            out.append(("nudge", o.rule, o.channel, o.template))
        elif isinstance(o, TaskCreated):
            out.append(("task", o.rule, o.kind))
    return out


WELCOME = ("nudge", "welcome", "email", "welcome")
THANKS = ("nudge", "first-meeting-thanks", "email", "thanks_first_meeting")
FOLLOW_UP = ("task", "first-meeting", "first_meeting_follow_up")
INVITE = ("nudge", "invite-signer", "sms", "invite_next_meeting")

RULES = [
    ("signup -> welcome", [], lambda: signup(), [WELCOME]),
    ("second signup -> nothing more", [signup()], lambda: signup(1), []),
    ("first meeting -> thanks + task", [], lambda: attended(), [THANKS, FOLLOW_UP]),
    ("signup then meeting", [signup()], lambda: attended(24), [THANKS, FOLLOW_UP]),
    ("second meeting -> nothing", [attended()], lambda: attended(200), []),
    ("rsvp -> nothing", [], lambda: rsvp(), []),
    ("signer never attended -> SMS", [], lambda: petition(), [INVITE]),
    ("signer who only RSVPed -> SMS", [rsvp()], lambda: petition(2), [INVITE]),
    ("signer who attended -> no SMS", [attended()], lambda: petition(2), []),
    ("signer attended long ago -> no SMS", [attended(-24 * 365)], lambda: petition(), []),
    ("second signature -> one SMS only", [petition()], lambda: petition(5), []),
    ("meeting after signing", [petition()], lambda: attended(5), [THANKS, FOLLOW_UP]),
]


@pytest.mark.parametrize(
    ("history", "make_event", "expected"),
    [pytest.param(h, m, e, id=name) for name, h, m, e in RULES],
)
def test_rules(history: list[Event], make_event: Any, expected: list[tuple[str, ...]]) -> None:
    state = fold(history)
    event = make_event()

    outputs = apply_event(state, event, HALF_LIFE)

    assert isinstance(outputs[0], EngagementScored)
    assert outputs[0].cause_event_id == event.event_id
    assert summary(outputs[1:]) == expected
    assert len(outputs) == 1 + len(expected)
    for output in outputs[1:]:
        assert output.supporter_id == SID  # type: ignore[attr-defined]
        assert output.cause_event_id == event.event_id  # type: ignore[attr-defined]
        assert output.event_time == event.event_time


def test_the_welcome_email_carries_the_area() -> None:
    event = signup(area="Hackney")

    _, welcome = apply_event(SupporterState(), event, HALF_LIFE)

    assert isinstance(welcome, NudgeRequested)
    assert welcome.nudge_id == f"welcome:{SID}"
    assert welcome.context == {"area": "Hackney"}


def test_the_first_meeting_task_is_due_48_hours_after_the_meeting() -> None:
    state = fold([signup(-72, area="Hackney")])
    event = attended(meeting_title="Housing action night")

    _, thanks, task = apply_event(state, event, HALF_LIFE)

    assert isinstance(thanks, NudgeRequested) and isinstance(task, TaskCreated)
    assert timedelta(hours=48) == FOLLOW_UP_WITHIN
    assert task.due_at == T0 + timedelta(hours=48)
    assert task.task_id == f"first-meeting-follow-up:{SID}"
    assert task.area == "Hackney"
    assert task.reason
    assert thanks.nudge_id == f"first-meeting-thanks:{SID}"
    assert thanks.context == {"area": "Hackney", "meeting_title": "Housing action night"}


def test_the_signer_invite_carries_the_petition_title() -> None:
    event = petition(petition_title="Clean air now", area="Leeds")

    _, invite = apply_event(SupporterState(), event, HALF_LIFE)

    assert isinstance(invite, NudgeRequested)
    assert invite.nudge_id == f"invite-signer:{SID}"
    assert invite.context == {"area": "Leeds", "petition_title": "Clean air now"}


@pytest.mark.parametrize("make_event", [signup, petition, rsvp, attended], ids=lambda f: f.__name__)
def test_a_redelivered_event_id_causes_nothing_and_changes_nothing(make_event: Any) -> None:
    state = SupporterState()
    event = make_event()
    first = apply_event(state, event, HALF_LIFE)
    before = (dict(state.actions), set(state.fired), state.rung, state.latest)

    again = apply_event(state, event, HALF_LIFE)

    assert first
    assert again == []
    assert (dict(state.actions), set(state.fired), state.rung, state.latest) == before


@pytest.mark.parametrize(
    "history", [[], [petition()], [signup()]], ids=["attended", "petition-first", "signup-first"]
)
def test_outputs_have_deterministic_ids(history: list[Event]) -> None:
    event = attended(meeting_title="Housing action night")

    first = apply_event(fold(history), event, HALF_LIFE)
    second = apply_event(fold(history), event, HALF_LIFE)

    assert [o.model_dump() for o in first] == [o.model_dump() for o in second]
    assert first[0].event_id == derived_event_id(event.event_id, "scored")
    for output in first[1:]:
        key = getattr(output, "nudge_id", None) or getattr(output, "task_id", None)
        assert output.event_id == derived_event_id(event.event_id, key.split(":")[0])


def test_outputs_are_valid_for_their_topics() -> None:
    """Outputs are built with model_construct; consumers validate them, so they must pass."""
    state = fold([signup(-5, area="Hackney"), petition(-4, petition_title="Clean air")])
    outputs = [
        *apply_event(state, attended(meeting_title="Housing night"), HALF_LIFE),
        *apply_event(SupporterState(), petition(petition_title="Trees"), HALF_LIFE),
        *apply_event(SupporterState(), signup(), HALF_LIFE),
    ]

    assert {o.topic for o in outputs} == {"engagement.scored", "nudge.requested", "task.created"}
    for output in outputs:
        parsed = type(output).model_validate_json(output.model_dump_json())
        assert parsed == output
        assert parsed.key() == SID


def test_the_score_output_reports_the_rung_change() -> None:
    state = fold([signup(), petition(1)])
    assert state.rung == "signer"

    scored = apply_event(state, attended(2), HALF_LIFE)[0]

    assert isinstance(scored, EngagementScored)
    assert (scored.previous_rung, scored.rung) == ("signer", "attendee")
    decayed = [1.0 * 2 ** (-2 * 3600 / (90 * DAY_S)), 2.0 * 2 ** (-3600 / (90 * DAY_S)), 10.0]
    assert scored.score == round(math.fsum(decayed), 6)
    assert scored.half_life_days == HALF_LIFE
    assert scored.event_time == T0 + timedelta(hours=2)
