"""The follow-up queue's rules as plain functions: a task's states, what an outcome does to it,
how a second trigger updates an open task, the queue's order, and district names. No I/O and
no clock: the caller passes ``now``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, get_args

from schemas.events import Commitment, OutcomeKind

OPEN, CLAIMED, DONE, CANCELLED, HELD_OUT = "open", "claimed", "done", "cancelled", "held_out"
ACTIVE = (OPEN, CLAIMED)
"""States someone still has to act on."""
PRIORITIES = ("high", "normal", "low")
"""Most urgent first."""
OUTCOMES: tuple[OutcomeKind, ...] = get_args(OutcomeKind)
COMMITMENTS: tuple[Commitment, ...] = get_args(Commitment)
NOTE_MAX = 280
"""Characters in an organiser's note on an outcome."""
RETRY_AFTER = timedelta(days=1)
"""A first no-answer reopens the task, due this long after the call."""
_DISTRICT = re.compile(r"^[A-Z]{1,2}[0-9][A-Z0-9]?$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,39}$")


@dataclass(frozen=True)
class Membership:
    group_id: str
    lead: bool


@dataclass(frozen=True)
class Acting:
    """An organiser as the queue's functions see them: who, which groups (leading which), and
    whether an admin (who also works the national queue). What a signed-in session holds."""

    organiser_id: str
    name: str
    is_admin: bool
    memberships: tuple[Membership, ...]

    @property
    def group_ids(self) -> tuple[str, ...]:
        return tuple(m.group_id for m in self.memberships)

    @property
    def led_group_ids(self) -> tuple[str, ...]:
        return tuple(m.group_id for m in self.memberships if m.lead)


class NotFound(LookupError):
    """No such task (or group) for this organiser: it does not exist, or it is another
    group's. The two are not told apart, so ids cannot be probed (an HTTP 404)."""


class Conflict(Exception):
    """The task is not in a state for this: claimed by someone else, done, cancelled, or
    changed meanwhile (an HTTP 409)."""


class Refused(PermissionError):
    """The organiser may not do this: disabled, or not an admin (an HTTP 403)."""


def holdout_reason(rule: str) -> str:
    """Why a nudge or task is held out: its supporter is in the rule's hold-out group."""
    return f"in the hold-out group of rule {rule}: recorded, not sent"


def district(raw: str) -> str:
    """A postcode district as organisers type it (``e1``, `` SW9 ``) in its stored form;
    ValueError when it is not one (a full postcode is refused: give the outward code)."""
    value = raw.strip().upper()
    if not _DISTRICT.match(value):
        raise ValueError(f"not a postcode district (the outward code, e.g. E1, SW9): {raw!r}")
    return value


def districts(raw: str) -> list[str]:
    """A comma-separated list of districts, each once, in the order given."""
    found: list[str] = []
    for part in raw.split(","):
        if part.strip():
            value = district(part)
            if value not in found:
                found.append(value)
    return found


def name_id(raw: str, what: str) -> str:
    """A group's or an organiser's id: lower case letters, digits, '.', '_' or '-'."""
    value = raw.strip()
    if not _NAME.match(value):
        raise ValueError(
            f"{what} id {raw!r}: use 1 to 40 lower-case letters, digits, '.', '_' or '-'"
        )
    return value


def more_urgent(a: str, b: str) -> str:
    """The more urgent of two priorities."""
    return min(a, b, key=_rank)


def _rank(priority: str) -> int:
    return PRIORITIES.index(priority) if priority in PRIORITIES else len(PRIORITIES)


@dataclass(frozen=True)
class Retrigger:
    """What a second trigger of the same kind makes of the open task."""

    reason: str
    due_at: datetime
    priority: str


def retriggered(
    reason: str, due_at: datetime, priority: str, new_reason: str, new_due: datetime, new: str
) -> Retrigger:
    """The open task takes the newer trigger's reason; it stays due by the earlier of the two
    due times and at the more urgent priority, so a second trigger never pushes back (or
    hides as not overdue) a call that was already owed."""
    return Retrigger(new_reason, min(due_at, new_due), more_urgent(priority, new))


@dataclass(frozen=True)
class OutcomeEffect:
    """What recording an outcome does to its task."""

    status: Literal["open", "done"]
    due_at: datetime | None
    """The new due time when the task is reopened; None: unchanged."""
    reopened: bool


def outcome_effect(outcome: OutcomeKind, attempts: int, now: datetime) -> OutcomeEffect:
    """A first no-answer (``attempts``: outcomes recorded before this one) reopens the task,
    due a day after the call; every other outcome, and a second no-answer, completes it."""
    if outcome == "no_answer" and attempts == 0:
        return OutcomeEffect("open", now + RETRY_AFTER, True)
    return OutcomeEffect("done", None, False)


def check_outcome(outcome: str, commitment: str | None, note: str | None) -> None:
    """ValueError naming what is wrong with an outcome as an organiser gives it."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome: one of {', '.join(OUTCOMES)}")
    if outcome == "reached_committed":
        if commitment not in COMMITMENTS:
            raise ValueError(f"commitment: one of {', '.join(COMMITMENTS)}")
    elif commitment is not None:
        raise ValueError("commitment: only with reached_committed")
    if note is not None and len(note) > NOTE_MAX:
        raise ValueError(f"note: at most {NOTE_MAX} characters")


def queue_order(due_at: datetime, priority: str, task_id: str, now: datetime) -> tuple[object, ...]:
    """The queue's order: overdue first, then by due time, then the more urgent, then id."""
    return (due_at >= now, due_at, _rank(priority), task_id)
