"""Engagement score and ladder rung: pure functions of a supporter's actions, in event time."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

DAY_S = 86_400.0

WEIGHTS: dict[str, float] = {
    "supporter.signup": 1.0,
    "petition.signed": 2.0,
    "event.rsvp": 3.0,
    "event.attended": 10.0,
}
"""Points an action is worth on the day it happens; it then halves every half-life."""

RUNGS: tuple[str, ...] = ("supporter", "signer", "attendee", "regular", "leader_candidate")
REGULAR_MEETINGS, REGULAR_WINDOW_DAYS = 3, 90
LEADER_MEETINGS, LEADER_WINDOW_DAYS, LEADER_MIN_SCORE = 5, 180, 40.0


@dataclass(frozen=True, slots=True)
class Action:
    """One scored action: its kind (the event type) and when it happened (epoch seconds)."""

    kind: str
    at: float


def score(actions: Iterable[Action], as_of: float, half_life_days: float) -> float:
    """Decayed weighted sum at ``as_of``: sum of weight * 2^-(age / half-life).

    ``math.fsum`` is exactly rounded, so the result does not depend on the order of the
    actions; actions later than ``as_of`` count at full weight (they are never in the future
    of the newest action, which is what callers pass as ``as_of``).
    """
    half_life_s = half_life_days * DAY_S
    return math.fsum(
        WEIGHTS.get(a.kind, 0.0) * 2.0 ** (-max(as_of - a.at, 0.0) / half_life_s) for a in actions
    )


def rung(actions: Iterable[Action], as_of: float, current_score: float) -> str:
    """The ladder rung, from counts within windows (days) and the score.

    supporter: any action; signer: signed a petition; attendee: came to a meeting;
    regular: REGULAR_MEETINGS meetings within REGULAR_WINDOW_DAYS; leader_candidate:
    LEADER_MEETINGS meetings within LEADER_WINDOW_DAYS and a score of LEADER_MIN_SCORE or more.
    Rungs go down again when meetings fall out of their windows.
    """
    signed = attended = recent_regular = recent_leader = 0
    for action in actions:
        if action.kind == "petition.signed":
            signed += 1
        elif action.kind == "event.attended":
            attended += 1
            age_days = (as_of - action.at) / DAY_S
            recent_regular += age_days <= REGULAR_WINDOW_DAYS
            recent_leader += age_days <= LEADER_WINDOW_DAYS
    if recent_leader >= LEADER_MEETINGS and current_score >= LEADER_MIN_SCORE:
        return "leader_candidate"
    if recent_regular >= REGULAR_MEETINGS:
        return "regular"
    if attended:
        return "attendee"
    if signed:
        return "signer"
    return "supporter"
