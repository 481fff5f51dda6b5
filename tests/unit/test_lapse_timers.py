"""Engine.tick with an explicit clock: lapse rules once per quiet spell, rungs that fall in time."""

from __future__ import annotations

import copy
import uuid
import zlib
from collections.abc import Callable
from datetime import timedelta

import pytest

from schemas.events import Event, LadderChanged, NudgeRequested, TaskCreated
from streams.engagement import MERGED, Engine, SupporterState
from streams.scoring import unpack_all
from tests.unit.engine_events import (
    SID,
    absorbed,
    at,
    attended,
    brought,
    click,
    consent,
    default_engine,
    engine_with,
    fold,
    output_ids,
    packed,
    petition,
    signup,
    unix,
)

RE_ENGAGE = "re-engage-lapsing-regular"
CHECK_IN = "check-in-lapsing-regular"
LAPSE_NAMESPACE = uuid.UUID("6f1c1e52-8a8e-4c55-9d4b-2b8f3f0c7d11")


def regular(*extra: Event, sid: str = SID, area: str | None = None) -> SupporterState:
    """Signed up (consenting), then three meetings on days 0, 1 and 2: a regular."""
    state = fold(
        [signup(-30, sid=sid, area=area), *(attended(d, sid=sid) for d in (0, 1, 2)), *extra]
    )
    assert default_engine().playbook.rung_names[state.rung] in ("regular", "leader_candidate")
    return state


def lapse_ids(quiet_since_days: float, sid: str = SID) -> list[str]:
    spell = packed(quiet_since_days)
    return [f"{RE_ENGAGE}:{sid}:quiet-since-{spell}", f"{CHECK_IN}:{sid}:quiet-since-{spell}"]


def tick(
    state: SupporterState, days: float, engine: Engine | None = None, sid: str = SID
) -> list[Event]:
    return (engine or default_engine()).tick({sid: state}, unix(days))


def rung_of(state: SupporterState) -> str:
    return default_engine().playbook.rung_names[state.rung]


# --- who the lapse rules are for --------------------------------------------------------------

LAPSE_TABLE = [
    ("a regular quiet 60 days", lambda: regular(), 62, lapse_ids(2)),
    ("a regular quiet 59 days", lambda: regular(), 61.99, []),
    (
        "a regular without email consent",
        lambda: regular(consent(2.5, "email", False)),
        62.5,
        lapse_ids(2.5)[1:],
    ),
    (
        "a regular who never consented",
        lambda: fold([attended(0), attended(1), attended(2)]),
        62,
        lapse_ids(2)[1:],
    ),
    ("a leader candidate", lambda: regular(brought(2)), 62, lapse_ids(2)),
    ("an attendee", lambda: fold([signup(-30), attended(0), attended(1)]), 400, []),
    ("a signer", lambda: fold([signup(-30), petition(0)]), 400, []),
]


@pytest.mark.parametrize(
    ("make", "now", "expected"),
    [pytest.param(m, n, e, id=name) for name, m, n, e in LAPSE_TABLE],
)
def test_lapse_rules_are_for_regulars_quiet_60_days(
    make: Callable[[], SupporterState], now: float, expected: list[str]
) -> None:
    state = make()

    outputs = tick(state, now)

    assert output_ids(outputs) == expected


def test_the_lapse_outputs() -> None:
    state = regular(area="Hackney")
    now = 62.5

    nudge, task = [o for o in tick(state, now) if isinstance(o, NudgeRequested | TaskCreated)]

    assert isinstance(nudge, NudgeRequested) and isinstance(task, TaskCreated)
    spell = packed(2)
    assert (nudge.rule, nudge.channel, nudge.template) == (RE_ENGAGE, "email", "we_miss_you")
    assert (task.rule, task.kind, task.priority) == (CHECK_IN, "check_in", "normal")
    assert nudge.event_time == task.event_time == at(now)
    assert task.due_at == at(now) + timedelta(hours=168)
    assert task.area == "Hackney"
    assert nudge.context == {"area": "Hackney"}
    cause = uuid.uuid5(LAPSE_NAMESPACE, f"lapse:{SID}:{spell}")
    assert nudge.cause_event_id == task.cause_event_id == cause
    assert nudge.event_id == uuid.uuid5(LAPSE_NAMESPACE, nudge.nudge_id)
    for output in (nudge, task):
        assert type(output).model_validate_json(output.model_dump_json()) == output


def test_two_replicas_ticking_at_different_moments_give_the_same_keys() -> None:
    state = regular()
    early, late = copy.deepcopy(state), copy.deepcopy(state)

    at_62 = [o for o in tick(early, 62) if not isinstance(o, LadderChanged)]
    at_70 = [o for o in tick(late, 70) if not isinstance(o, LadderChanged)]

    assert output_ids(at_62) == output_ids(at_70) == lapse_ids(2)
    assert [o.event_id for o in at_62] == [o.event_id for o in at_70]


# --- once per quiet spell ---------------------------------------------------------------------


def test_a_quiet_spell_fires_the_lapse_rules_exactly_once() -> None:
    state = regular()

    fired = [output_ids(tick(state, day)) for day in (30, 61, 62, 62 + 1 / 1440, 63, 200, 2000)]

    assert fired == [[], [], lapse_ids(2), [], [], [], []]


def test_new_activity_starts_a_new_quiet_spell() -> None:
    state = regular()
    assert output_ids(tick(state, 62)) == lapse_ids(2)

    fold([attended(63), attended(64), attended(65)], state=state)  # back, and regular
    assert rung_of(state) == "regular"

    assert output_ids(tick(state, 124.9)) == []
    assert output_ids(tick(state, 125)) == lapse_ids(65)
    assert output_ids(tick(state, 126)) == []


def _cooldown_90_engine() -> Engine:
    """The re-engage rule for everyone (no conditions), waiting 90 days between firings."""
    return engine_with(
        "    when: {rung_in: [regular, leader_candidate]}\n"
        "    action: {send: email, template: we_miss_you}\n"
        "    cooldown_days: 60",
        "    action: {send: email, template: we_miss_you}\n    cooldown_days: 90",
    )


def test_a_quiet_spell_that_lapses_within_the_cooldown_is_skipped() -> None:
    engine = _cooldown_90_engine()
    state = fold([signup(0)], engine)

    def nudges(day: float) -> list[str]:
        outputs = engine.tick({SID: state}, unix(day))
        return [o.nudge_id for o in outputs if isinstance(o, NudgeRequested)]

    assert nudges(60) == [f"{RE_ENGAGE}:{SID}:quiet-since-{packed(0)}"]
    engine.apply(state, click(61), unix(61))  # a new quiet spell, a day after the nudge

    # Quiet 60 days on day 121, but only 61 days since the nudge: decided then, suppressed,
    # and not decided again in this spell, however long it lasts.
    assert nudges(121) == []
    assert state.lapsed == 2
    assert nudges(150) == []
    assert nudges(300) == []

    engine.apply(state, click(301), unix(301))  # the next spell starts
    assert state.lapsed == 0
    assert nudges(360.9) == []
    assert nudges(361) == [f"{RE_ENGAGE}:{SID}:quiet-since-{packed(301)}"]


def test_a_lapse_rule_suppressed_when_due_is_not_retried_in_the_same_spell() -> None:
    state = fold([attended(0), attended(1), attended(2)])  # a regular who never consented
    assert output_ids(tick(state, 62)) == lapse_ids(2)[1:]  # the check-in; no email consent

    # Email consent dated inside the spell, reaching the log late: the spell goes on.
    default_engine().apply(state, consent(1, "email", True), unix(63))
    assert state.latest == packed(2)

    assert output_ids(tick(state, 64)) == []
    assert output_ids(tick(state, 200)) == []


def test_each_lapse_rule_is_decided_when_the_spell_reaches_its_length() -> None:
    # A second lapse rule, after 30 days quiet, for everyone.
    engine = engine_with(
        "rules:\n",
        "rules:\n"
        "  - name: quiet-a-month\n"
        "    trigger: {no_activity_days: 30}\n"
        "    action: {task: check_in, reason: Quiet a month., due_within_hours: 24}\n"
        "    cooldown_days: 30\n",
    )
    state = fold([signup(-30), attended(0), attended(1), attended(2)], engine)

    def ids(day: float) -> list[str]:
        return output_ids(engine.tick({SID: state}, unix(day)))

    month = f"quiet-a-month:{SID}:quiet-since-{packed(2)}"
    assert ids(31.9) == []
    assert ids(32) == [month]
    assert state.lapsed == 1
    assert ids(61.9) == []
    assert ids(62) == lapse_ids(2)  # the 60-day rules, judged on the regular of day 2
    assert state.lapsed == 3
    assert ids(100) == []


def test_a_clock_that_jumps_past_several_lapses_decides_them_all_at_once() -> None:
    engine = engine_with(
        "rules:\n",
        "rules:\n"
        "  - name: quiet-a-month\n"
        "    trigger: {no_activity_days: 30}\n"
        "    action: {task: check_in, reason: Quiet a month., due_within_hours: 24}\n"
        "    cooldown_days: 30\n",
    )
    state = fold([signup(-30), attended(0), attended(1), attended(2)], engine)

    outputs = engine.tick({SID: state}, unix(300))

    assert sorted(output_ids(outputs)) == sorted(
        [f"quiet-a-month:{SID}:quiet-since-{packed(2)}", *lapse_ids(2)]
    )
    assert all(o.event_time == at(300) for o in outputs)


def test_a_late_event_from_inside_the_spell_does_not_fire_it_again() -> None:
    state = regular()
    assert output_ids(tick(state, 62)) == lapse_ids(2)

    default_engine().apply(state, click(30), unix(62.1))  # reached the log late
    assert output_ids(tick(state, 90)) == []  # quiet since day 30: but fired already


def test_a_replayed_tick_records_the_firing_without_emitting() -> None:
    state = regular()

    assert default_engine().tick({SID: state}, unix(62), emit=False) == []
    assert output_ids(tick(state, 63)) == []


# --- rungs fall as windows pass ---------------------------------------------------------------


def test_a_regular_whose_meetings_age_out_goes_down() -> None:
    state = regular()
    tick(state, 62)  # the lapse rules

    assert tick(state, 90) == []  # the meeting of day 0 is exactly 90 days old: still in
    (changed,) = tick(state, 90 + 1 / 86400)
    assert tick(state, 91) == []
    assert tick(state, 400) == []

    assert isinstance(changed, LadderChanged)
    assert (changed.previous_rung, changed.rung, changed.direction) == (
        "regular",
        "attendee",
        "down",
    )
    assert changed.cause_event_id is None
    assert changed.event_time == at(90) + timedelta(seconds=1)
    assert changed.reason == "Came to at least one meeting."
    view = default_engine().scorer.view(list(unpack_all(state.actions)), packed(90 + 1 / 86400))
    assert changed.score == round(view.score, 6)
    assert rung_of(state) == "attendee"
    assert type(changed).model_validate_json(changed.model_dump_json()) == changed


def test_a_leader_candidate_falls_as_the_score_decays_then_as_meetings_age() -> None:
    state = regular(brought(2))
    assert rung_of(state) == "leader_candidate"

    moves: list[tuple[int, str, str]] = []
    lapses: list[tuple[int, list[str]]] = []
    for day in range(3, 200):
        outputs = tick(state, day)
        moves += [
            (day, o.previous_rung or "", o.rung) for o in outputs if isinstance(o, LadderChanged)
        ]
        if output_ids(outputs):
            lapses.append((day, output_ids(outputs)))

    (fell, _, _), (aged, _, _) = moves
    assert [m[1:] for m in moves] == [("leader_candidate", "regular"), ("regular", "attendee")]
    assert fell < 62 < aged == 91
    assert lapses == [(62, lapse_ids(2))]
    view = default_engine().scorer.view(list(unpack_all(state.actions)), packed(fell))
    assert view.score < 25


def test_a_rung_lost_rule_fires_when_time_takes_the_rung() -> None:
    engine = engine_with(
        "rules:\n",
        "rules:\n"
        "  - name: no-longer-regular\n"
        "    trigger: {rung_lost: regular}\n"
        "    action: {task: check_in, reason: Stopped coming., due_within_hours: 24}\n"
        "    cooldown_days: 30\n",
    )
    state = fold([attended(0), attended(1), attended(2)], engine)
    for day in (62, 90):
        engine.tick({SID: state}, unix(day))

    outputs = engine.tick({SID: state}, unix(91))

    assert output_ids(outputs) == [f"no-longer-regular:{SID}:quiet-since-{packed(2)}"]


# --- who is not due ---------------------------------------------------------------------------


def test_tick_does_nothing_for_supporters_not_due() -> None:
    states = {
        "sup_" + "1" * 32: fold([signup(0, sid="sup_" + "1" * 32)]),  # a supporter, quiet 10 days
        "sup_" + "2" * 32: regular(sid="sup_" + "2" * 32),  # quiet 8 days, meetings in window
        "sup_" + "3" * 32: fold([petition(20, sid="sup_" + "3" * 32)]),  # dated after now
        "sup_" + "4" * 32: SupporterState(),  # nothing yet
    }
    before = {sid: (s.actions, s.fired, s.latest, s.rung) for sid, s in states.items()}

    assert default_engine().tick(states, unix(10)) == []
    assert {sid: (s.actions, s.fired, s.latest, s.rung) for sid, s in states.items()} == before


def test_a_merged_away_supporter_is_never_due() -> None:
    state = regular()
    default_engine().apply(state, absorbed(3, sid=SID))
    assert state.rung == MERGED

    assert tick(state, 400) == []


def test_only_the_due_supporters_of_many_get_outputs() -> None:
    sids = [f"sup_{n:032x}" for n in range(6)]
    states = {sid: regular(sid=sid) for sid in sids[:3]}
    states.update({sid: regular(attended(40, sid=sid), sid=sid) for sid in sids[3:]})

    outputs = default_engine().tick(states, unix(62))

    assert sorted(output_ids(outputs)) == sorted(i for sid in sids[:3] for i in lapse_ids(2, sid))


# --- what time causes does not depend on how often the clock ticks ---------------------------


def test_lapse_rules_do_not_depend_on_how_often_the_clock_ticks() -> None:
    """A regular (meetings on days 0-2) who signed a petition on day 50 was a regular at their
    last activity; they are due a lapse on day 110 whatever the clock did in between."""
    often, seldom = regular(petition(50)), regular(petition(50))

    every_day = [i for day in range(51, 111) for i in output_ids(tick(often, day))]
    once = output_ids(tick(seldom, 110))

    assert once == lapse_ids(50)
    assert every_day == once


def test_a_fall_has_the_same_event_id_whenever_the_clock_notices_it() -> None:
    early = regular()
    late = copy.copy(early)  # the same supporter, the same events, on two workers

    (fell_early,) = [o for o in tick(early, 91) if isinstance(o, LadderChanged)]
    (fell_late,) = [o for o in tick(late, 95) if isinstance(o, LadderChanged)]

    assert fell_early.event_id == fell_late.event_id
    assert fell_early.event_id == uuid.uuid5(
        LAPSE_NAMESPACE,
        f"ladder:{SID}:regular>attendee:quiet-since-{packed(2)}:{zlib.crc32(early.actions)}",
    )
    assert (fell_early.event_time, fell_late.event_time) == (at(91), at(95))  # the tick's moment


def test_a_fall_noticed_by_a_restarted_worker_has_the_same_event_id() -> None:
    """A restart replays the log without its ticks: the fall is noticed on the first tick."""
    live = regular()
    restarted = copy.copy(live)  # the state the restarted worker rebuilds from the same log
    ticked = [o for day in range(3, 100) for o in tick(live, day) if isinstance(o, LadderChanged)]
    default_engine().tick({SID: restarted}, unix(62), emit=False)  # replayed, not emitted

    (fall,) = ticked
    (again,) = [o for o in tick(restarted, 99) if isinstance(o, LadderChanged)]

    assert again.event_id == fall.event_id


def test_a_late_event_from_before_a_fall_does_not_make_the_rung_flap() -> None:
    """The rung is placed as of the fall the clock saw, not as of the newest action."""
    state = regular()
    tick(state, 62)
    assert [o.rung for o in tick(state, 91) if isinstance(o, LadderChanged)] == ["attendee"]

    late = default_engine().apply(state, click(50), unix(91.5))
    after = tick(state, 92)

    assert [o for o in [*late, *after] if isinstance(o, LadderChanged)] == []


def test_two_different_falls_never_share_an_event_id() -> None:
    """A late event dated inside the spell lifts the rung (the flap above) and time takes it
    again: a different fall (other actions kept), so a different id."""
    state = regular(petition(80))  # quiet since day 80; the meetings of days 0-2 age out
    falls = [o for day in range(81, 92) for o in tick(state, day) if isinstance(o, LadderChanged)]
    default_engine().apply(state, attended(50), unix(91.5))  # late, dated inside the spell
    falls += [o for o in tick(state, 93) if isinstance(o, LadderChanged)]

    assert [(o.previous_rung, o.rung) for o in falls] == [("regular", "attendee")] * 2
    assert falls[0].event_id != falls[1].event_id
