"""The per-supporter state machine: fold an event into state, return the events it causes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from schemas.events import (
    EngagementScored,
    Event,
    EventAttended,
    NudgeRequested,
    PetitionSigned,
    SupporterSignup,
    TaskCreated,
    derived_event_id,
)
from streams.scoring import Action, rung, score

FOLLOW_UP_WITHIN = timedelta(hours=48)


@dataclass(slots=True)
class SupporterState:
    """What the stream keeps per supporter: actions by event id, rules fired, last rung."""

    actions: dict[str, Action] = field(default_factory=dict)
    fired: set[str] = field(default_factory=set)
    rung: str | None = None
    area: str | None = None
    latest: float = 0.0

    @property
    def meetings_attended(self) -> int:
        return sum(1 for a in self.actions.values() if a.kind == "event.attended")


def apply_event(
    state: SupporterState, event: Event, half_life_days: float, emit: bool = True
) -> list[Event]:
    """Fold ``event`` into ``state`` (in place) and return what it causes.

    Outputs are built with ``model_construct`` from already-validated values: they are
    ours, and validating them again would cost more than the rest of the fold.

    A repeated event id changes nothing and causes nothing, so redelivery is harmless.
    With ``emit=False`` the state is rebuilt (replay) and nothing is returned.
    """
    event_key = str(event.event_id)
    if event_key in state.actions:
        return []
    attended_before = state.meetings_attended
    at = event.event_time.timestamp()
    state.actions[event_key] = Action(event.topic, at)
    state.latest = max(state.latest, at)
    area = getattr(event, "area", None)
    if area:
        state.area = area
    current = score(state.actions.values(), state.latest, half_life_days)
    previous_rung, state.rung = state.rung, rung(state.actions.values(), state.latest, current)
    if not emit:
        for rule_key in _rules(state, event, attended_before):
            state.fired.add(rule_key[0])
        return []
    sid = _supporter(event)
    outputs: list[Event] = [
        EngagementScored.model_construct(
            event_id=derived_event_id(event.event_id, "scored"),
            event_time=datetime.fromtimestamp(state.latest, UTC),
            supporter_id=sid,
            score=round(current, 6),
            rung=state.rung,
            previous_rung=previous_rung,
            cause_event_id=event.event_id,
            half_life_days=half_life_days,
        )
    ]
    for key, output in _rules(state, event, attended_before):
        if key not in state.fired:
            state.fired.add(key)
            outputs.append(output)
    return outputs


def _supporter(event: Event) -> str:
    return str(getattr(event, "supporter_id"))  # noqa: B009 - every input event has one


def _rules(state: SupporterState, event: Event, attended_before: int) -> list[tuple[str, Event]]:
    """The spine's three rules. Each output's id is its idempotency key.

    - welcome: an email on signup, once per supporter;
    - first meeting: after the first meeting attended, a thank-you email and an organiser
      follow-up task due within FOLLOW_UP_WITHIN of the meeting, once per supporter;
    - invite signer: an SMS inviting a petition signer who has never attended to the next
      local meeting, once per supporter.
    """
    sid = _supporter(event)
    fired: list[tuple[str, Event]] = []

    def nudge(
        rule: str, channel: Literal["email", "sms"], template: str, context: dict[str, str]
    ) -> None:
        key = f"{rule}:{sid}"
        fired.append(
            (
                key,
                NudgeRequested.model_construct(
                    event_id=derived_event_id(event.event_id, rule),
                    event_time=event.event_time,
                    nudge_id=key,
                    supporter_id=sid,
                    channel=channel,
                    template=template,
                    rule=rule,
                    cause_event_id=event.event_id,
                    context=context,
                ),
            )
        )

    area = {"area": state.area} if state.area else {}
    if isinstance(event, SupporterSignup):
        nudge("welcome", "email", "welcome", area)
    elif isinstance(event, EventAttended) and attended_before == 0:
        meeting = {"meeting_title": event.meeting_title} if event.meeting_title else {}
        nudge("first-meeting-thanks", "email", "thanks_first_meeting", {**area, **meeting})
        key = f"first-meeting-follow-up:{sid}"
        fired.append(
            (
                key,
                TaskCreated.model_construct(
                    event_id=derived_event_id(event.event_id, "first-meeting-follow-up"),
                    event_time=event.event_time,
                    task_id=key,
                    supporter_id=sid,
                    kind="first_meeting_follow_up",
                    reason="Came to a first meeting: call to thank them and ask what brought them.",
                    due_at=event.event_time + FOLLOW_UP_WITHIN,
                    area=state.area,
                    rule="first-meeting",
                    cause_event_id=event.event_id,
                ),
            )
        )
    elif isinstance(event, PetitionSigned) and state.meetings_attended == 0:
        petition = {"petition_title": event.petition_title} if event.petition_title else {}
        nudge("invite-signer", "sms", "invite_next_meeting", {**area, **petition})
    return fired
