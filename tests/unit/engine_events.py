"""Input events for the engine's unit tests, one line each, and a fold over them.

Times are given in days (fractions allowed) after ``T0``; every builder takes ``sid=`` for
another supporter and passes other fields through to the event model.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.actions import action_kinds
from schemas.events import (
    ConsentChanged,
    EmailClicked,
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
from streams.engagement import Engine, SupporterState, Trace
from streams.playbook import DEFAULT_PLAYBOOK, load_playbook, parse_playbook
from streams.scoring import EPOCH

SID = "sup_" + "b" * 32
OTHER = "sup_" + "c" * 32
T0 = datetime(2025, 3, 4, 19, 0, tzinfo=UTC)
CONTACT = {"email": "jo@example.org"}


@functools.cache
def default_engine() -> Engine:
    return Engine(load_playbook())


def engine_with(old: str, new: str) -> Engine:
    """An engine running the default playbook with one piece of its text replaced."""
    text = DEFAULT_PLAYBOOK.read_text()
    assert text.count(old) == 1, old
    return Engine(parse_playbook(text.replace(old, new)))


def at(days: float) -> datetime:
    return T0 + timedelta(days=days)


def packed(days: float) -> int:
    """The engine's time of an event ``days`` after T0: seconds since 2000-01-01."""
    return int(at(days).timestamp()) - EPOCH


def unix(days: float) -> float:
    return at(days).timestamp()


def _base(days: float, sid: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"event_time": at(days), "supporter_id": sid, **fields}


def signup(
    days: float = 0, *, sid: str = SID, email: bool = True, sms: bool = True, **fields: Any
) -> SupporterSignup:
    """A signup; by default consenting to both email and SMS."""
    return SupporterSignup(
        **_base(days, sid, {**CONTACT, **fields}), consent_email=email, consent_sms=sms
    )


def petition(days: float = 0, *, sid: str = SID, **fields: Any) -> PetitionSigned:
    return PetitionSigned(**_base(days, sid, {**CONTACT, "petition_id": "clean-air", **fields}))


def rsvp(days: float = 0, *, sid: str = SID, **fields: Any) -> EventRSVP:
    return EventRSVP(**_base(days, sid, {**CONTACT, "meeting_id": "m-1", **fields}))


def attended(days: float = 0, *, sid: str = SID, **fields: Any) -> EventAttended:
    return EventAttended(**_base(days, sid, {**CONTACT, "meeting_id": "m-1", **fields}))


def hosted(days: float = 0, *, sid: str = SID, **fields: Any) -> EventAttended:
    return attended(days, sid=sid, role="host", **fields)


def no_show(days: float = 0, *, sid: str = SID, **fields: Any) -> EventNoShow:
    return EventNoShow(**_base(days, sid, {**CONTACT, "meeting_id": "m-1", **fields}))


def brought(days: float = 0, *, sid: str = SID, **fields: Any) -> SupporterBrought:
    return SupporterBrought(
        **_base(days, sid, {"brought_supporter_id": OTHER, "meeting_id": "m-1", **fields})
    )


def outcome(days: float = 0, result: str = "positive", *, sid: str = SID) -> TaskOutcome:
    return TaskOutcome(**_base(days, sid, {"task_id": "t-1", "outcome": result}))


def click(days: float = 0, *, sid: str = SID) -> EmailClicked:
    return EmailClicked(**_base(days, sid, {"nudge_id": "welcome:x"}))


def consent(days: float, channel: str, granted: bool, *, sid: str = SID) -> ConsentChanged:
    return ConsentChanged(
        **_base(days, sid, {"channel": channel, "granted": granted, "source": "form"})
    )


def merged_actions(events: Iterable[Event]) -> list[MergedAction]:
    """What an identity merge carries for the absorbed id's events: one entry per action."""
    return [
        MergedAction(
            event_id=e.event_id,
            type=e.topic,
            kind=kind,
            event_time=e.event_time,
            area=getattr(e, "area", None),
        )
        for e in events
        for kind in action_kinds(e)
    ]


def survivor(
    days: float, absorbed_events: Iterable[Event], *, sid: str = SID, absorbed: str = OTHER
) -> IdentityMerged:
    return IdentityMerged(
        event_time=at(days),
        supporter_id=sid,
        role="survivor",
        survivor_id=sid,
        absorbed_id=absorbed,
        actions=merged_actions(absorbed_events),
    )


def absorbed(days: float, *, sid: str = OTHER, into: str = SID) -> IdentityMerged:
    return IdentityMerged(
        event_time=at(days), supporter_id=sid, role="absorbed", survivor_id=into, absorbed_id=sid
    )


def fold(
    events: Iterable[Event],
    engine: Engine | None = None,
    state: SupporterState | None = None,
    emit: bool = True,
) -> SupporterState:
    """Fold events into a (new) state, arriving when they happened."""
    engine = engine or default_engine()
    state = state if state is not None else SupporterState()
    for event in events:
        engine.apply(state, event, event.event_time.timestamp(), emit=emit)
    return state


def apply_traced(
    state: SupporterState,
    event: Event,
    late_hours: float = 0.0,
    engine: Engine | None = None,
) -> tuple[list[Event], Trace]:
    """Apply one event that reached the log ``late_hours`` after it happened."""
    engine = engine or default_engine()
    trace = Trace()
    arrived = event.event_time.timestamp() + late_hours * 3600
    return engine.apply(state, event, arrived, trace=trace), trace


def output_ids(outputs: Iterable[Event]) -> list[str]:
    """The idempotency keys (nudge_id, task_id) of the nudges and tasks, in order."""
    out: list[str] = []
    for o in outputs:
        if isinstance(o, NudgeRequested):
            out.append(o.nudge_id)
        elif isinstance(o, TaskCreated):
            out.append(o.task_id)
    return out
