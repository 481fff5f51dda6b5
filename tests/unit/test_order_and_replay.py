"""The fold does not depend on arrival order, redelivery or replay; identity merges fold in."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.actions import KINDS
from schemas.events import (
    ConsentChanged,
    EmailClicked,
    EngagementScored,
    Event,
    EventAttended,
    EventNoShow,
    EventRSVP,
    IdentityMerged,
    MergedAction,
    NudgeRequested,
    PetitionSigned,
    SupporterBrought,
    SupporterSignup,
    TaskCreated,
    TaskOutcome,
)
from streams.engagement import MERGED, SupporterState, Trace
from streams.scoring import DAY_S, unpack_all
from tests.unit.engine_events import (
    OTHER,
    SID,
    T0,
    absorbed,
    attended,
    brought,
    default_engine,
    fold,
    merged_actions,
    output_ids,
    petition,
    rsvp,
    signup,
    survivor,
    unix,
)

SPAN_DAYS = 800
"""A little over the default playbook's two years of memory, so forgetting happens too."""


def snapshot(state: SupporterState) -> tuple[bytes, int, int, float]:
    """What must not depend on order: kept actions, newest time, rung, and the exact score."""
    score = default_engine().scorer.view(list(unpack_all(state.actions)), state.latest).score
    return state.actions, state.latest, state.rung, score


def full(state: SupporterState) -> tuple[bytes, bytes, int, int, str | None]:
    return state.actions, state.fired, state.latest, state.rung, state.area


# --- generated histories ----------------------------------------------------------------------

seconds = st.one_of(
    st.integers(0, SPAN_DAYS * DAY_S),  # anywhere in the two years and more
    # Clusters: the same days again and again, so caps and cap windows come into play.
    st.builds(
        lambda day, s: day * DAY_S + s,
        st.sampled_from([0, 1, 2, 5, 6, 7, 60, 364, 365, 729, 730, 731, 795]),
        st.integers(0, 3 * 3600),
    ),
)
areas = st.one_of(st.none(), st.sampled_from(["Hackney", "Leeds"]))
OUTCOMES = ["positive", "neutral", "negative", "no_answer", "wrong_number"]


@st.composite
def events(draw: st.DrawFn) -> Event:
    t = T0 + timedelta(seconds=draw(seconds))
    base = {"event_id": draw(st.uuids()), "event_time": t, "supporter_id": SID}
    contact = {**base, "email": "jo@example.org", "area": draw(areas)}
    kind = draw(st.integers(0, 10))
    if kind == 0:
        return SupporterSignup(
            **contact, consent_email=draw(st.booleans()), consent_sms=draw(st.booleans())
        )
    if kind == 1:
        return PetitionSigned(**contact, petition_id="p")
    if kind == 2:
        return EventRSVP(**contact, meeting_id="m")
    if kind == 3:
        return EventAttended(
            **contact, meeting_id="m", role=draw(st.sampled_from(["attendee", "host"]))
        )
    if kind == 4:
        return EventNoShow(**contact, meeting_id="m")
    if kind == 5:
        return SupporterBrought(**base, brought_supporter_id=OTHER, meeting_id="m")
    if kind == 6:
        result = draw(st.sampled_from(OUTCOMES))
        return TaskOutcome(**base, task_id="t", outcome=result)
    if kind == 7:
        return EmailClicked(**base, nudge_id="n")
    if kind == 8:
        return ConsentChanged(
            **base,
            channel=draw(st.sampled_from(["email", "sms"])),
            granted=draw(st.booleans()),
            source="form",
        )
    if kind == 9:
        return EventAttended(**contact, meeting_id="m")  # meetings matter most: more of them
    actions = draw(
        st.lists(
            st.builds(
                lambda kind, s, eid, area: MergedAction(
                    event_id=eid,
                    type="x",
                    kind=kind,
                    event_time=T0 + timedelta(seconds=s),
                    area=area,
                ),
                st.sampled_from(KINDS),
                seconds,
                st.uuids(),
                areas,
            ),
            max_size=4,
        )
    )
    return IdentityMerged(
        **base, role="survivor", survivor_id=SID, absorbed_id=OTHER, actions=actions
    )


histories = st.lists(events(), min_size=1, max_size=25)


def with_redeliveries(data: st.DataObject, history: list[Event]) -> list[Event]:
    """The history in some order, some events delivered more than once."""
    again = data.draw(st.lists(st.sampled_from(history), max_size=8))
    return data.draw(st.permutations([*history, *again]))


@settings(max_examples=150, deadline=None)
@given(history=histories, data=st.data())
def test_any_order_gives_exactly_the_same_actions_score_and_rung(
    history: list[Event], data: st.DataObject
) -> None:
    first = with_redeliveries(data, history)
    second = with_redeliveries(data, history)

    assert snapshot(fold(first)) == snapshot(fold(second)) == snapshot(fold(history))


@settings(max_examples=100, deadline=None)
@given(history=histories)
def test_folding_everything_twice_changes_nothing(history: list[Event]) -> None:
    state = fold(history)
    once = snapshot(state)

    fold(history, state=state)

    assert snapshot(state) == once


@settings(max_examples=100, deadline=None)
@given(history=histories, data=st.data())
def test_a_replay_rebuilds_exactly_the_live_state(
    history: list[Event], data: st.DataObject
) -> None:
    order = with_redeliveries(data, history)
    live, replayed = SupporterState(), SupporterState()
    engine = default_engine()

    for event in order:
        arrived = event.event_time.timestamp() + data.draw(st.sampled_from([0, 3600, 100 * 3600]))
        engine.apply(live, event, arrived, emit=True)
        assert engine.apply(replayed, event, arrived, emit=False) == []

    assert full(replayed) == full(live)


@settings(max_examples=100, deadline=None)
@given(history=histories, data=st.data())
def test_no_nudge_without_consent(history: list[Event], data: st.DataObject) -> None:
    state = SupporterState()
    for event in with_redeliveries(data, history):
        outputs = default_engine().apply(state, event)
        consent = default_engine().scorer.view(list(unpack_all(state.actions)), 0).consent
        for output in outputs:
            if isinstance(output, NudgeRequested):
                assert output.channel in consent


def test_an_output_key_is_never_emitted_twice() -> None:
    state = fold([signup(-1)])
    late = petition(0)  # dated before the last firing, in a window that already fired
    trace = Trace()

    keys = [
        key
        for event in (petition(0), petition(30))
        for key in output_ids(default_engine().apply(state, event))
    ]
    again = default_engine().apply(state, late, trace=trace)

    assert len(keys) == len(set(keys)) == 2, keys
    assert output_ids(again) == []
    (decision,) = trace.entries[-1].rules
    assert (decision.rule, decision.decision) == ("invite-signer", "suppressed")
    assert decision.reason.startswith("cooldown: fired 2025-04-03")


@settings(max_examples=150, deadline=None)
@given(history=histories, data=st.data())
def test_no_output_key_is_emitted_twice_in_any_order(
    history: list[Event], data: st.DataObject
) -> None:
    state = SupporterState()
    keys: list[str] = []
    for event in with_redeliveries(data, history):
        keys += output_ids(default_engine().apply(state, event))

    assert len(keys) == len(set(keys)), keys


# --- the regression that made forgetting window-wide ------------------------------------------


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))), ids=str)
def test_a_cap_window_straddling_the_forgetting_horizon_keeps_the_same_actions(
    order: tuple[int, ...],
) -> None:
    """Two signups in one 365-day cap window (one kept), then an action two years later that
    puts the horizon between them: what is kept must not depend on which came first."""
    events = [
        signup(-40, email=False, sms=False),
        signup(100, email=False, sms=False),
        petition(795),
    ]

    assert snapshot(fold([events[i] for i in order])) == snapshot(fold(events))


# --- identity merges --------------------------------------------------------------------------

MINE = [signup(0), petition(1), attended(5)]
THEIRS = [rsvp(2), attended(10), brought(12)]


def test_a_survivor_folds_in_the_absorbed_ids_actions() -> None:
    state = fold(MINE)
    merge = survivor(20, THEIRS)

    scored, *rest = default_engine().apply(state, merge, unix(20))

    assert snapshot(state) == snapshot(fold([*MINE, *THEIRS]))
    assert isinstance(scored, EngagementScored)
    assert scored.cause_event_id == merge.event_id
    assert scored.score == round(snapshot(state)[3], 6)
    assert scored.previous_rung == "attendee"
    assert scored.rung == "attendee"  # two meetings: the merge made no regular yet
    assert rest == []


def test_actions_both_ids_knew_are_not_counted_twice() -> None:
    state = fold(MINE)
    merge = survivor(20, [*THEIRS, MINE[1], MINE[2]])  # the same events, seen by both ids

    default_engine().apply(state, merge)
    default_engine().apply(state, merge)  # and the merge itself redelivered

    assert snapshot(state) == snapshot(fold([*MINE, *THEIRS]))
    assert len(state.actions) // 8 == len(unpack_all(fold([*MINE, *THEIRS]).actions))


def test_a_merge_that_makes_a_regular_fires_the_rung_rules() -> None:
    state = fold([attended(0), attended(1)])
    merge = survivor(3, [attended(2)])

    outputs = default_engine().apply(state, merge, unix(3))

    assert default_engine().playbook.rung_names[state.rung] == "regular"
    tasks = [o for o in outputs if isinstance(o, TaskCreated)]
    assert [t.rule for t in tasks] == ["one-to-one-new-regular"]
    assert tasks[0].cause_event_id == merge.event_id


def test_merged_actions_carry_consent() -> None:
    state = fold([petition(0)])
    default_engine().apply(state, survivor(1, [signup(0.5, sid=OTHER)]))

    (_, invite) = default_engine().apply(state, petition(40))

    assert isinstance(invite, NudgeRequested) and invite.channel == "sms"


def test_an_absorbed_id_is_emptied_and_then_ignored() -> None:
    state = fold([signup(0, sid=OTHER), attended(1, sid=OTHER)])
    engine = default_engine()

    assert engine.apply(state, absorbed(2)) == []
    assert (state.actions, state.fired, state.rung) == (b"", b"", MERGED)

    trace = Trace()
    assert engine.apply(state, petition(3, sid=OTHER), trace=trace) == []
    assert engine.apply(state, attended(4, sid=OTHER)) == []
    assert (state.actions, state.fired, state.rung) == (b"", b"", MERGED)
    assert trace.entries[-1].outcome == "merged away"
    assert engine.tick({OTHER: state}, unix(400)) == []


def test_explain_says_an_id_was_merged_away() -> None:
    events = [signup(0, sid=OTHER), absorbed(2), petition(3, sid=OTHER)]

    explained = default_engine().explain(OTHER, [(e, None) for e in events], unix(5))

    assert explained["merged"] is True
    assert explained["rung"] is None
    assert explained["events"][-1]["outcome"] == "merged away"


@settings(max_examples=60, deadline=None)
@given(mine=histories, theirs=histories)
def test_a_merge_gives_the_state_of_one_supporter_who_did_both(
    mine: list[Event], theirs: list[Event]
) -> None:
    def inputs(events: list[Event]) -> list[Event]:
        return [e for e in events if not isinstance(e, IdentityMerged)]

    state = fold(inputs(mine))
    default_engine().apply(state, survivor(0, inputs(theirs)))

    assert snapshot(state) == snapshot(fold([*inputs(mine), *inputs(theirs)]))


def test_merged_actions_are_one_per_kind_of_each_event() -> None:
    joined = signup(0)

    actions = merged_actions([joined])

    assert [a.kind for a in actions] == ["supporter.signup", "email.opted_in", "sms.opted_in"]
    assert {a.event_id for a in actions} == {joined.event_id}
