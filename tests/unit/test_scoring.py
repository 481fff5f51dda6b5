"""Score and rung: weights, half-life decay, rung boundaries, and order independence."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import Event, EventAttended, EventRSVP, PetitionSigned, SupporterSignup
from streams.engagement import SupporterState, apply_event
from streams.scoring import (
    DAY_S,
    LEADER_MIN_SCORE,
    RUNGS,
    WEIGHTS,
    Action,
    rung,
    score,
)

HALF_LIFE = 90.0
T0 = 1_700_000_000.0
SID = "sup_" + "a" * 32


def days(n: float) -> float:
    return T0 + n * DAY_S


# --- score ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "points"),
    [
        ("supporter.signup", 1.0),
        ("petition.signed", 2.0),
        ("event.rsvp", 3.0),
        ("event.attended", 10.0),
        ("engagement.scored", 0.0),
        ("something.else", 0.0),
    ],
)
def test_an_action_on_the_day_is_worth_its_weight(kind: str, points: float) -> None:
    assert score([Action(kind, T0)], T0, HALF_LIFE) == points


@pytest.mark.parametrize(
    ("age_days", "half_life", "expected"),
    [
        (0, 90, 10.0),
        (90, 90, 5.0),
        (180, 90, 2.5),
        (270, 90, 1.25),
        (30, 30, 5.0),
        (45, 90, 10.0 * 2**-0.5),
    ],
)
def test_the_score_halves_every_half_life(
    age_days: float, half_life: float, expected: float
) -> None:
    assert score([Action("event.attended", days(0))], days(age_days), half_life) == expected


def test_actions_later_than_as_of_count_at_full_weight() -> None:
    assert score([Action("event.rsvp", days(5))], days(0), HALF_LIFE) == 3.0


def test_the_score_is_the_sum_of_the_decayed_weights() -> None:
    actions = [
        Action("supporter.signup", days(0)),
        Action("petition.signed", days(90)),
        Action("event.attended", days(180)),
    ]
    assert score(actions, days(180), HALF_LIFE) == 0.25 + 1.0 + 10.0
    assert score([], days(180), HALF_LIFE) == 0.0


# --- rung -------------------------------------------------------------------------------------


def _actions(*spec: tuple[str, float]) -> list[Action]:
    return [Action(kind, days(day)) for kind, day in spec]


def meetings(*day_list: float) -> list[tuple[str, float]]:
    return [("event.attended", d) for d in day_list]


RUNG_TABLE = [
    ("nothing", [], 0, "supporter"),
    ("signup", [("supporter.signup", 0)], 0, "supporter"),
    ("rsvp only", [("event.rsvp", 0)], 0, "supporter"),
    ("signed", [("supporter.signup", 0), ("petition.signed", 1)], 1, "signer"),
    ("one meeting", meetings(0), 0, "attendee"),
    ("signed and met", [("petition.signed", 0), *meetings(1)], 1, "attendee"),
    ("two meetings", meetings(0, 10), 10, "attendee"),
    ("three in a day", meetings(0, 0, 0), 0, "regular"),
    ("three, 90 days exactly", meetings(0, 45, 90), 90, "regular"),
    ("three, window expired", meetings(0, 45, 90.001), 90.001, "attendee"),
    ("three, then time passes", meetings(0, 10, 20), 110.5, "attendee"),
    ("four, one expired", meetings(0, 50, 60, 70), 120, "regular"),
    ("five in a day", meetings(0, 0, 0, 0, 0), 0, "leader_candidate"),
    ("five within 180 days", meetings(0, 170, 175, 178, 180), 180, "leader_candidate"),
    ("five, one beyond 180 days", meetings(0, 170, 175, 178, 180.5), 180.5, "regular"),
    ("five spread, score too low", meetings(0, 45, 90, 135, 180), 180, "regular"),
]


@pytest.mark.parametrize(
    ("spec", "as_of_day", "expected"),
    [pytest.param(spec, day, want, id=name) for name, spec, day, want in RUNG_TABLE],
)
def test_rung_boundaries(spec: list[tuple[str, float]], as_of_day: float, expected: str) -> None:
    actions = _actions(*spec)
    as_of = days(as_of_day)
    assert rung(actions, as_of, score(actions, as_of, HALF_LIFE)) == expected


def test_the_leader_rung_needs_the_minimum_score() -> None:
    actions = _actions(*meetings(0, 0, 0, 0, 0))
    assert rung(actions, T0, LEADER_MIN_SCORE) == "leader_candidate"
    assert rung(actions, T0, LEADER_MIN_SCORE - 0.001) == "regular"


def test_the_rung_goes_down_when_meetings_leave_the_window() -> None:
    actions = _actions(*meetings(0, 30, 60, 61, 62))
    path = [rung(actions, days(d), score(actions, days(d), HALF_LIFE)) for d in (62, 150, 151, 400)]
    assert path == ["leader_candidate", "regular", "attendee", "attendee"]
    assert path[0] in RUNGS


# --- order independence -----------------------------------------------------------------------

KINDS = sorted(WEIGHTS)
action_lists = st.lists(
    st.builds(
        Action,
        kind=st.sampled_from([*KINDS, "unknown.kind"]),
        at=st.floats(min_value=T0 - 400 * DAY_S, max_value=T0, allow_nan=False),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(actions=action_lists, data=st.data())
def test_any_permutation_of_the_actions_gives_exactly_the_same_score_and_rung(
    actions: list[Action], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(actions))
    half_life = data.draw(st.floats(min_value=1.0, max_value=365.0))
    as_of = max((a.at for a in actions), default=T0)

    first, second = score(actions, as_of, half_life), score(shuffled, as_of, half_life)
    assert first == second
    assert rung(actions, as_of, first) == rung(shuffled, as_of, second)


TOPIC_MODELS: dict[str, type[Event]] = {
    "supporter.signup": SupporterSignup,
    "petition.signed": PetitionSigned,
    "event.rsvp": EventRSVP,
    "event.attended": EventAttended,
}


def _event(kind: str, day: float) -> Event:
    model = TOPIC_MODELS[kind]
    fields: dict[str, object] = {
        "event_id": uuid.uuid4(),
        "event_time": datetime.fromtimestamp(T0, UTC) + timedelta(days=day),
        "supporter_id": SID,
        "email": "jo@example.org",
    }
    if kind == "petition.signed":
        fields["petition_id"] = "p-1"
    if kind in ("event.rsvp", "event.attended"):
        fields["meeting_id"] = "m-1"
    return model.model_validate(fields)


event_lists = st.lists(
    st.builds(
        _event,
        kind=st.sampled_from(sorted(TOPIC_MODELS)),
        day=st.floats(min_value=0, max_value=400, allow_nan=False),
    ),
    min_size=1,
    max_size=15,
)


def _fold(events: list[Event]) -> tuple[SupporterState, list[Event]]:
    state = SupporterState()
    outputs: list[Event] = []
    for event in events:
        outputs.extend(apply_event(state, event, HALF_LIFE))
    return state, outputs


@settings(max_examples=150, deadline=None)
@given(events=event_lists, data=st.data())
def test_apply_event_in_any_order_ends_in_the_same_score_and_rung(
    events: list[Event], data: st.DataObject
) -> None:
    # Some events delivered twice, in any order: redelivery must change nothing.
    redelivered = data.draw(st.lists(st.sampled_from(events), max_size=5))
    order_a = data.draw(st.permutations([*events, *redelivered]))
    order_b = data.draw(st.permutations([*events, *redelivered]))

    state_a, outputs_a = _fold(order_a)
    state_b, outputs_b = _fold(order_b)

    assert state_a.rung == state_b.rung
    assert state_a.latest == state_b.latest
    assert score(state_a.actions.values(), state_a.latest, HALF_LIFE) == score(
        state_b.actions.values(), state_b.latest, HALF_LIFE
    )
    last_a = [o for o in outputs_a if o.topic == "engagement.scored"][-1]
    last_b = [o for o in outputs_b if o.topic == "engagement.scored"][-1]
    assert (last_a.score, last_a.rung) == (last_b.score, last_b.rung)  # type: ignore[attr-defined]
    for outputs in (outputs_a, outputs_b):
        assert len([o for o in outputs if o.topic == "engagement.scored"]) == len(events)
        keys = [
            getattr(o, "nudge_id", None) or getattr(o, "task_id", None)
            for o in outputs
            if o.topic in ("nudge.requested", "task.created")
        ]
        assert len(keys) == len(set(keys))
        ids = [o.event_id for o in outputs]
        assert len(ids) == len(set(ids))
