"""Simulated analytics records for the mart's tests and figures: people who sign up over a
period, act, climb a ladder, are nudged (or held out) by two rules and tasked by a third, with
a known, higher chance of a next step when nudged. Deterministic for a seed."""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from schemas.events import (
    AnalyticsAction,
    AnalyticsErased,
    AnalyticsMessage,
    AnalyticsNudge,
    AnalyticsRecord,
    AnalyticsScore,
    AnalyticsTask,
)

AREAS = (
    ("Hackney", "E8"),
    ("Islington", "N1"),
    ("Lambeth", "SW9"),
    ("Manchester", "M14"),
    ("Leeds", "LS6"),
    ("Bristol", "BS5"),
    ("Glasgow", "G12"),
    ("Cardiff", "CF24"),
)
TINY_AREA = ("Scilly", "TR21")
"""An area with one or two people: the charts must leave it out."""
RUNGS = ((0.0, "supporter"), (5.0, "activist"), (15.0, "organiser"), (30.0, "leader"))
WEIGHTS = {
    "petition.signed": 2.0,
    "event.rsvp": 1.0,
    "event.attended": 5.0,
    "training.completed": 8.0,
    "email.clicked": 0.5,
}
RULES = ("welcome-email", "petition-to-meeting")
TASK_RULE = "first-meeting-follow-up"
KEY_ID = "k1"


def person_of(seed: int, n: int) -> str:
    return "p_" + hashlib.sha256(f"{seed}:{n}".encode()).hexdigest()[:32]


def rung_of(score: float) -> str:
    return [name for floor, name in RUNGS if score >= floor][-1]


def simulated_people(
    people: int,
    start: datetime,
    days: int,
    seed: int = 7,
    holdout: float = 0.2,
    nudged_step: float = 0.5,
    held_step: float = 0.2,
) -> Iterator[AnalyticsRecord]:
    """Each person's records, person by person: a signup in ``days`` from ``start``, a few
    actions, a score after each, a nudge of each rule (held out with chance ``holdout``) whose
    chance of a next step within 14 days is ``nudged_step`` (``held_step`` when held out),
    messages' statuses, a follow-up task after a first meeting and its outcome."""
    rng = random.Random(seed)
    for n in range(people):
        yield from _person(rng, person_of(seed, n), n, start, days, holdout, nudged_step, held_step)


def _person(
    rng: random.Random,
    person: str,
    n: int,
    start: datetime,
    days: int,
    holdout: float,
    nudged_step: float,
    held_step: float,
) -> Iterator[AnalyticsRecord]:
    area, district = TINY_AREA if n in (3, 4) else AREAS[rng.randrange(len(AREAS))]
    joined = start + timedelta(seconds=rng.randrange(max(1, days * 86400 - 3600)))
    end = start + timedelta(days=days)
    common = {"person": person, "key_id": KEY_ID}

    def new_id() -> uuid.UUID:
        return uuid.UUID(int=rng.getrandbits(128), version=4)

    actions: list[tuple[datetime, str]] = [(joined, "supporter.signup")]
    at = joined
    for _ in range(rng.randrange(0, 6)):
        at += timedelta(hours=rng.randrange(6, 24 * 40))
        if at < end:
            actions.append((at, rng.choice(list(WEIGHTS))))
    records: list[AnalyticsRecord] = []
    for index, rule in enumerate(RULES):
        asked = joined + timedelta(hours=1 + index * 24 * rng.randrange(1, 20))
        if asked >= end:
            continue
        held = rng.random() < holdout
        nudge_id = f"{rule}:{person}:{index}"
        cause = new_id()
        channel = "email" if index == 0 else "sms"
        records.append(
            AnalyticsNudge(
                event_id=new_id(),
                event_time=asked,
                nudge_id=nudge_id,
                rule=rule,
                channel=channel,
                template=rule,
                holdout=held,
                cause_event_id=cause,
                **common,
            )
        )
        if not held:
            final = rng.choices(("delivered", "bounced", "skipped"), (90, 5, 5))[0]
            statuses = ["sent", final] if final != "skipped" else ["skipped"]
            for k, status in enumerate(statuses):
                records.append(
                    AnalyticsMessage(
                        event_id=new_id(),
                        event_time=asked + timedelta(minutes=5 * (k + 1)),
                        nudge_id=nudge_id,
                        channel=channel,
                        rule=rule,
                        status=status,
                        reason_code="quiet_hours" if status == "skipped" else None,
                        **common,
                    )
                )
        if rng.random() < (held_step if held else nudged_step):
            step = asked + timedelta(hours=rng.randrange(1, 13 * 24))
            if step < end:
                actions.append((step, rng.choice(("petition.signed", "event.rsvp"))))
    actions.sort()
    score = 0.0
    previous: str | None = None
    tasked = False
    for when, kind in actions:
        event_id = new_id()
        records.append(
            AnalyticsAction(
                event_id=event_id,
                event_time=when,
                type=kind,  # type: ignore[arg-type]
                district=district,
                area=area,
                source="web" if kind == "supporter.signup" else None,
                petition_id="p-clean-air" if kind == "petition.signed" else None,
                meeting_id="m-monthly" if kind.startswith("event.") else None,
                role="attendee" if kind == "event.attended" else None,
                training="one-to-ones" if kind == "training.completed" else None,
                **common,
            )
        )
        score += WEIGHTS.get(kind, 1.0)
        rung = rung_of(score)
        records.append(
            AnalyticsScore(
                event_id=new_id(),
                event_time=when,
                score=score,
                rung=rung,
                previous_rung=previous,
                cause_event_id=event_id,
                **common,
            )
        )
        previous = rung
        if kind == "event.attended" and not tasked:
            tasked = True
            task_id = f"{TASK_RULE}:{person}"
            held = rng.random() < holdout
            records.append(
                AnalyticsTask(
                    event_id=new_id(),
                    event_time=when,
                    task_id=task_id,
                    kind="call",
                    rule=TASK_RULE,
                    priority="normal",
                    holdout=held,
                    due_at=when + timedelta(days=2),
                    area=area,
                    cause_event_id=event_id,
                    **common,
                )
            )
            if not held and when + timedelta(days=1) < end:
                records.append(
                    AnalyticsAction(
                        event_id=new_id(),
                        event_time=when + timedelta(days=1),
                        type="task.outcome",
                        task_id=task_id,
                        outcome=rng.choice(("reached_committed", "no_answer")),
                        commitment="meeting",
                        area=area,
                        district=district,
                        **common,
                    )
                )
    yield from records


def erased(person: str, at: datetime | None = None) -> AnalyticsErased:
    return AnalyticsErased(
        event_id=uuid.uuid4(), event_time=at or datetime.now(UTC), person=person, key_id=KEY_ID
    )
