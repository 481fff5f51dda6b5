"""Score and rung in event time: weights, half-life decay, caps, forgetting, consent, refusals."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from datetime import timedelta

import pytest

from schemas.actions import KINDS
from schemas.events import EngagementScored, Event
from streams.engagement import Engine, FutureEvent, SupporterState, Trace
from streams.playbook import parse_playbook
from streams.scoring import DAY_S, EPOCH, KIND_CODE, kind_of, pack, time_of, unpack_all
from tests.unit.engine_events import (
    T0,
    attended,
    brought,
    click,
    consent,
    default_engine,
    engine_with,
    fold,
    hosted,
    no_show,
    outcome,
    packed,
    petition,
    rsvp,
    signup,
    unix,
)

HALF_LIFE_S = 90 * DAY_S


def kept(state: SupporterState) -> list[tuple[str, float]]:
    """The kept actions: (kind, days after T0), in the order they are kept (by time)."""
    return [
        (KINDS[kind_of(v)], (time_of(v) + EPOCH - T0.timestamp()) / DAY_S)
        for v in unpack_all(state.actions)
    ]


def score_of(state: SupporterState, engine: Engine | None = None) -> float:
    engine = engine or default_engine()
    return float(engine.scorer.view(list(unpack_all(state.actions)), state.latest).score)


def decayed(weight: float, age_s: float) -> float:
    """The engine's arithmetic for one action ``age_s`` seconds before the score's moment."""
    return weight * 2.0 ** (-age_s / HALF_LIFE_S)


def outcomes(events: Sequence[Event], engine: Engine | None = None) -> list[str]:
    """What became of each event's action: counted, duplicate, over cap, forgotten, ..."""
    engine = engine or default_engine()
    state, trace = SupporterState(), Trace()
    for event in events:
        engine.apply(state, event, trace=trace)
    return [entry.outcome for entry in trace.entries]


# --- weights and decay ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "points"),
    [
        (lambda: signup(email=False, sms=False), 1.0),
        (lambda: signup(), 1.0),  # consenting is worth nothing in itself
        (petition, 2.0),
        (rsvp, 3.0),
        (attended, 10.0),
        (hosted, 15.0),
        (brought, 8.0),
        (lambda: outcome(0, "positive"), 5.0),
        (lambda: outcome(0, "neutral"), 0.0),
        (lambda: outcome(0, "no_answer"), 0.0),
        (lambda: outcome(0, "negative"), -2.0),
        (click, 0.5),
        (no_show, -3.0),
        (lambda: consent(0, "email", False), -5.0),
        (lambda: consent(0, "sms", False), -5.0),
        (lambda: consent(0, "sms", True), 0.0),
    ],
    ids=[
        "signup",
        "signup-consenting",
        "petition",
        "rsvp",
        "attended",
        "hosted",
        "brought",
        "outcome-positive",
        "outcome-neutral",
        "outcome-no-answer",
        "outcome-negative",
        "click",
        "no-show",
        "email-opt-out",
        "sms-opt-out",
        "sms-opt-in",
    ],
)
def test_an_action_on_the_day_is_worth_its_weight(make: Callable[[], Event], points: float) -> None:
    scored = default_engine().apply(SupporterState(), make())[0]

    assert isinstance(scored, EngagementScored)
    assert scored.score == points


@pytest.mark.parametrize(
    ("age_days", "expected"),
    [(0, 10.0), (45, 10.0 * 2**-0.5), (90, 5.0), (180, 2.5), (270, 1.25), (720, 10 * 2.0**-8)],
)
def test_the_score_halves_every_half_life(age_days: float, expected: float) -> None:
    # A neutral outcome weighs nothing: it only moves the score's moment on.
    state = fold([attended(0), outcome(age_days, "neutral")])

    assert score_of(state) == expected


def test_the_half_life_comes_from_the_playbook() -> None:
    engine = engine_with("half_life_days: 90 ", "half_life_days: 30 ")
    state = fold([attended(0), outcome(30, "neutral")], engine)

    assert score_of(state, engine) == 5.0
    assert engine.apply(state, outcome(60, "neutral"))[0].score == 2.5  # type: ignore[attr-defined]


def test_the_score_is_the_exact_sum_of_the_decayed_weights() -> None:
    state = fold([signup(0, email=False, sms=False), petition(90), attended(180)])

    assert score_of(state) == 0.25 + 1.0 + 10.0
    assert score_of(SupporterState()) == 0.0


def test_actions_later_than_the_moment_count_at_full_weight() -> None:
    state = fold([rsvp(0)])

    view = default_engine().scorer.view(list(unpack_all(state.actions)), packed(-5))

    assert view.score == 3.0


def test_the_score_is_as_of_the_newest_action_not_the_newest_arrival() -> None:
    state = fold([attended(90)])

    (scored,) = default_engine().apply(state, rsvp(0))

    assert isinstance(scored, EngagementScored)
    assert scored.event_time == T0 + timedelta(days=90)
    assert scored.score == 10.0 + decayed(3.0, 90 * DAY_S) == 11.5


# --- negative weights -------------------------------------------------------------------------


def test_setbacks_take_points_away_and_the_score_can_go_below_zero() -> None:
    assert score_of(fold([no_show(0)])) == -3.0
    assert score_of(fold([signup(0), consent(0, "email", False), consent(0, "sms", False)])) == -9
    state = fold([attended(0), no_show(30), outcome(30, "negative")])
    assert score_of(state) == math.fsum([decayed(10.0, 30 * DAY_S), -3.0, -2.0])


# --- caps -------------------------------------------------------------------------------------


def test_forty_petitions_in_a_day_count_as_the_cap() -> None:
    times = [1 + i * 0.02 for i in range(40)]  # petition.signed: at most 3 in 7 days
    events = [petition(d) for d in times]
    random.Random(7).shuffle(events)

    state = fold(events)

    assert kept(state) == [("petition.signed", pytest.approx(d)) for d in times[:3]]
    latest = (times[-1] - times[0]) * DAY_S  # over-cap actions still move the moment on
    assert state.latest == packed(times[-1])
    expected = math.fsum(decayed(2.0, latest - (d - times[0]) * DAY_S) for d in times[:3])
    assert score_of(state) == pytest.approx(expected, rel=1e-12)
    assert score_of(state) < 6.0


def test_what_is_over_the_cap_is_said() -> None:
    events = [petition(1 + i / 100) for i in range(5)]

    assert outcomes(events) == ["counted", "counted", "counted", "over cap", "over cap"]


def test_a_late_earlier_action_displaces_a_later_one_in_the_same_window() -> None:
    later = [petition(1.1), petition(1.2), petition(1.3)]
    earlier = petition(1.05)

    state = fold([*later, earlier])

    assert [d for _, d in kept(state)] == pytest.approx([1.05, 1.1, 1.2])
    assert outcomes([*later, earlier, later[2]]) == [
        "counted",
        "counted",
        "counted",
        "counted",
        "over cap",  # the displaced one, redelivered
    ]
    assert state.actions == fold([earlier, *later]).actions


def test_each_cap_window_counts_on_its_own() -> None:
    week = 7 * DAY_S
    assert packed(2) // week != packed(5) // week, "day 2 and day 5 are in different windows"
    friday = [petition(2 + i / 100) for i in range(4)]
    sunday = [petition(5 + i / 100) for i in range(4)]

    state = fold([*friday, *sunday])

    assert len(kept(state)) == 6
    assert score_of(state) == pytest.approx(
        math.fsum(decayed(2.0, (5.03 - d) * DAY_S) for d in (2, 2.01, 2.02, 5, 5.01, 5.02))
    )


def test_attending_twice_in_a_day_counts_once() -> None:
    state = fold([attended(0), attended(0.1)])

    assert kept(state) == [("event.attended", 0.0)]


# --- forgetting -------------------------------------------------------------------------------

FORGETFUL = """
version: 1
scoring:
  forget_after_days: 10
  actions:
    event.rsvp: {weight: 3}
    petition.signed: {weight: 2, cap: 1, per_days: 7}
ladder:
  - name: supporter
"""


@pytest.fixture(scope="module")
def forgetful() -> Engine:
    return Engine(parse_playbook(FORGETFUL))


@pytest.mark.parametrize(
    ("newest", "still_kept"),
    [(10, True), (10 + 1 / DAY_S, False), (9, True), (400, False)],
    ids=["exactly-10-days", "a-second-more", "9-days", "a-year"],
)
def test_actions_older_than_forget_after_days_before_the_newest_drop_out(
    forgetful: Engine, newest: float, still_kept: bool
) -> None:
    for order in ([rsvp(0), rsvp(newest)], [rsvp(newest), rsvp(0)]):
        state = fold(order, forgetful)

        assert [d for _, d in kept(state)] == ([0, newest] if still_kept else [newest])


def test_an_action_arriving_already_forgotten_is_said(forgetful: Engine) -> None:
    assert outcomes([rsvp(20), rsvp(0)], forgetful) == ["counted", "forgotten"]


def test_a_capped_action_is_forgotten_with_its_whole_cap_window(forgetful: Engine) -> None:
    """So that which petitions a window keeps never depends on which arrived first."""
    week = 7 * DAY_S
    window_end = (packed(0) // week + 1) * week
    end = (window_end + EPOCH - T0.timestamp()) / DAY_S  # in days after T0
    signed = end - 1 / 24

    def kept_after(newest_days: float) -> list[str]:
        return [k for k, _ in kept(fold([petition(signed), rsvp(newest_days)], forgetful))]

    assert kept_after(signed + 10) == ["petition.signed", "event.rsvp"]
    assert kept_after(end + 10 - 1 / DAY_S) == ["petition.signed", "event.rsvp"]
    assert kept_after(end + 10) == ["event.rsvp"]


def test_the_default_playbook_forgets_after_two_years() -> None:
    # event.attended is capped per day: forgotten once its day is two years before the newest.
    assert kept(fold([attended(0), attended(731)])) == [("event.attended", 731)]
    assert kept(fold([attended(0), attended(729)])) == [
        ("event.attended", 0),
        ("event.attended", 729),
    ]


def test_consent_is_never_forgotten() -> None:
    state = fold([signup(0), petition(1100)])

    assert kept(state) == [("email.opted_in", 0), ("sms.opted_in", 0), ("petition.signed", 1100)]
    assert default_engine().scorer.view(list(unpack_all(state.actions)), 0).consent == {
        "email",
        "sms",
    }


# --- consent: the newest per channel ----------------------------------------------------------


def consent_of(state: SupporterState) -> frozenset[str]:
    return default_engine().scorer.view(list(unpack_all(state.actions)), state.latest).consent


def test_only_the_newest_consent_per_channel_is_kept() -> None:
    given, withdrawn, late_given = signup(0), consent(5, "email", False), consent(3, "email", True)

    state = fold([given, withdrawn, late_given])

    assert consent_of(state) == {"sms"}
    assert [k for k, _ in kept(state)] == ["supporter.signup", "sms.opted_in", "email.opted_out"]
    assert outcomes([given, withdrawn, late_given]) == ["counted", "counted", "superseded"]
    assert fold([late_given, withdrawn, given]).actions == state.actions


def test_a_withdrawal_and_a_consent_at_the_same_second_mean_no_consent() -> None:
    yes, no = consent(1, "sms", True), consent(1, "sms", False)

    assert consent_of(fold([yes, no])) == consent_of(fold([no, yes])) == frozenset()


def test_channels_are_independent() -> None:
    state = fold([signup(0), consent(1, "sms", False), consent(2, "email", True)])

    assert consent_of(state) == {"email"}
    assert [k for k, _ in kept(state)] == ["supporter.signup", "sms.opted_out", "email.opted_in"]


# --- duplicates -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make", [signup, petition, attended, no_show, click], ids=lambda f: f.__name__
)
def test_a_duplicate_is_ignored(make: Callable[[float], Event]) -> None:
    event = make(0)
    state = fold([event])
    before = (state.actions, state.latest, score_of(state))

    assert default_engine().apply(state, event) == []
    assert (state.actions, state.latest, score_of(state)) == before
    assert outcomes([event, event]) == ["counted", "duplicate"]


# --- events from the future -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ahead_hours", "refused"), [(23.9, False), (24, False), (24.1, True), (24 * 365, True)]
)
def test_an_event_dated_far_after_its_arrival_is_refused(ahead_hours: float, refused: bool) -> None:
    state = fold([signup(0)])
    before = (state.actions, state.fired, state.latest, state.rung)
    event = attended(1 + ahead_hours / 24)

    if not refused:
        default_engine().apply(state, event, unix(1))
        return
    with pytest.raises(FutureEvent) as raised:
        default_engine().apply(state, event, unix(1))

    assert str(raised.value) == (
        f"event_time is {ahead_hours:.1f} h after the event arrived (tolerance 24 h)"
    )
    assert (state.actions, state.fired, state.latest, state.rung) == before


def test_the_future_tolerance_comes_from_the_playbook() -> None:
    engine = engine_with("future_tolerance_hours: 24", "future_tolerance_hours: 0")

    with pytest.raises(FutureEvent, match=r"0\.1 h after .* \(tolerance 0 h\)"):
        engine.apply(SupporterState(), petition(1 + 0.1 / 24), unix(1))


def test_without_an_arrival_time_nothing_is_refused() -> None:
    assert default_engine().apply(SupporterState(), petition(10_000))


# --- rungs ------------------------------------------------------------------------------------


def meetings(*days: float) -> list[Event]:
    return [attended(d) for d in days]


RUNG_TABLE: list[tuple[str, list[Event], float, str]] = [
    ("nothing but an RSVP", [rsvp(0)], 0, "supporter"),
    ("signup", [signup(0)], 0, "supporter"),
    ("signed", [signup(0), petition(1)], 1, "signer"),
    ("one meeting", meetings(0), 0, "attendee"),
    ("signed and met", [petition(0), *meetings(1)], 1, "attendee"),
    ("hosted once", [hosted(0)], 0, "attendee"),
    ("two meetings", meetings(0, 10), 10, "attendee"),
    ("three in a day count once", meetings(0, 0.01, 0.02), 0.02, "attendee"),
    ("three on three days", meetings(0, 1, 2), 2, "regular"),
    ("three, 90 days exactly", meetings(0, 45, 90), 90, "regular"),
    ("three, window just expired", meetings(0, 45, 90 + 1 / DAY_S), 90 + 1 / DAY_S, "attendee"),
    ("three, then time passes", meetings(0, 10, 20), 110.5, "attendee"),
    ("four, one expired", meetings(0, 50, 60, 70), 120, "regular"),
    ("a regular who brought someone", [*meetings(0, 1, 2), brought(2)], 2, "leader_candidate"),
    ("a regular who hosts", [*meetings(0, 1), hosted(2)], 2, "leader_candidate"),
    (
        "brought someone 180 days ago",
        [brought(0), *meetings(170, 171, 180)],
        180,
        "leader_candidate",
    ),
    ("brought someone 181 days ago", [brought(0), *meetings(171, 172, 181)], 181, "regular"),
    (
        "a regular who brought someone, score under 25",
        [*meetings(0, 60, 89), brought(89), consent(89, "sms", False), no_show(89)],
        89,
        "regular",
    ),
]


@pytest.mark.parametrize(
    ("events", "as_of", "expected"),
    [pytest.param(e, d, want, id=name) for name, e, d, want in RUNG_TABLE],
)
def test_rung_boundaries(events: list[Event], as_of: float, expected: str) -> None:
    # A neutral outcome (weight 0) moves the moment on to as_of.
    state = fold([*events, outcome(as_of, "neutral")])

    assert default_engine().playbook.rung_names[state.rung] == expected


def test_the_leader_rung_needs_a_score_of_25() -> None:
    engine = default_engine()
    view = engine.scorer.view(list(unpack_all(fold([*meetings(0, 1, 2), brought(2)]).actions)), 0)

    view.score = 25.0
    assert engine.scorer.rung(view) == 4
    view.score = math.nextafter(25.0, 0)
    assert engine.scorer.rung(view) == 3


def test_the_rung_goes_down_as_meetings_leave_the_window() -> None:
    state = fold([brought(0), *meetings(170, 175, 179)])
    names = default_engine().playbook.rung_names
    path = [names[state.rung]]
    for day in (181, 265, 400):
        default_engine().apply(state, outcome(day, "neutral"))
        path.append(names[state.rung])

    assert path == ["leader_candidate", "regular", "attendee", "attendee"]


# --- the Scorer's own API, on unpacked values --------------------------------------------------


def _value(kind: str, days: float, fp: int = 1) -> int:
    return pack(packed(days), KIND_CODE[kind], fp)


def test_add_keeps_the_values_sorted_and_says_what_became_of_each() -> None:
    scorer = default_engine().scorer
    values: list[int] = []
    petitions = [_value("petition.signed", 1 + n / 10, fp=n) for n in (3, 1, 2, 0)]

    results = [scorer.add(values, v, packed(2)) for v in petitions]

    assert results == ["counted", "counted", "counted", "counted"]  # the earliest displaces
    assert values == sorted(petitions)[:3]
    assert scorer.add(values, petitions[1], packed(2)) == "duplicate"
    assert scorer.add(values, _value("petition.signed", 1.5), packed(2)) == "over cap"
    assert values == sorted(petitions)[:3]


def test_add_keeps_only_the_newest_consent_per_channel() -> None:
    scorer = default_engine().scorer
    values = [_value("email.opted_in", 1)]

    assert scorer.add(values, _value("email.opted_out", 0), packed(1)) == "superseded"
    assert scorer.add(values, _value("email.opted_out", 2), packed(2)) == "counted"
    assert values == [_value("email.opted_out", 2)]


def test_add_and_forget_drop_what_is_too_old() -> None:
    scorer = default_engine().scorer  # forgets after 730 days
    values = [_value("event.rsvp", 0), _value("email.opted_in", 0), _value("event.rsvp", 800)]

    assert scorer.add(values, _value("event.rsvp", 60), packed(800)) == "forgotten"
    kept_now = scorer.forget(values, packed(800))

    assert kept_now == [_value("email.opted_in", 0), _value("event.rsvp", 800)]  # consent stays
    assert scorer.forget(kept_now, packed(800)) == kept_now


def test_score_view_and_contributions_agree_exactly() -> None:
    scorer = default_engine().scorer
    values = sorted(
        [_value("event.attended", 0), _value("petition.signed", 3), _value("event.no_show", 40)]
    )
    as_of = packed(50)

    view = scorer.view(values, as_of, rung=2, area="Leeds", keep_terms=True)
    contributions = scorer.contributions(view)

    assert (view.rung, view.area, view.as_of) == (2, "Leeds", as_of)
    assert scorer.view(values, as_of).terms == []  # kept only when asked for
    assert view.score == scorer.score(values, as_of) == math.fsum(c.points for c in contributions)
    assert [(c.kind, c.weight) for c in contributions] == [
        ("event.attended", 10.0),
        ("petition.signed", 2.0),
        ("event.no_show", -3.0),
    ]
    assert contributions[0].factor == 2.0 ** (-50 * DAY_S / HALF_LIFE_S)
    assert contributions[0].at == T0
