"""Action kinds: what a supporter did, as the score and the playbook's rules see it.

Each input event adds one action (a signup, a petition signed, a meeting attended or hosted,
...), and a signup may add consent actions too. The stream's state keeps actions, an identity
merge carries them from one supporter id to another, and playbooks weigh and count them.
"""

from __future__ import annotations

from typing import Literal, get_args

from schemas.events import (
    ConsentChanged,
    EmailClicked,
    Event,
    EventAttended,
    EventNoShow,
    EventRSVP,
    PetitionSigned,
    SupporterBrought,
    SupporterSignup,
    TaskOutcome,
    TrainingCompleted,
)

Kind = Literal[
    "supporter.signup",
    "petition.signed",
    "event.rsvp",
    "event.attended",
    "event.hosted",
    "event.no_show",
    "supporter.brought",
    "outcome.positive",
    "outcome.neutral",
    "outcome.negative",
    "outcome.no_answer",
    "outcome.wrong_number",
    "email.clicked",
    "email.opted_in",
    "email.opted_out",
    "sms.opted_in",
    "sms.opted_out",
    # Added with version 2 of task.outcome and training.completed; appended, so that the
    # codes of the kinds above (packed in the stream's state) stay what they were.
    "outcome.not_now",
    "outcome.do_not_contact",
    "commitment.meeting",
    "commitment.host",
    "commitment.bring_someone",
    "commitment.lead",
    "training.completed",
]
KINDS: tuple[str, ...] = get_args(Kind)
CONSENT_KINDS = {
    "email": ("email.opted_in", "email.opted_out"),
    "sms": ("sms.opted_in", "sms.opted_out"),
}


def kinds_of(event: Event) -> tuple[str, list[str]]:
    """The action kind of an input event, and the consent actions it carries."""
    simple = _SIMPLE.get(type(event))
    if simple is not None:
        return simple, []
    if isinstance(event, SupporterSignup):
        extra = [k for k, yes in (("email.opted_in", event.consent_email),
                                  ("sms.opted_in", event.consent_sms)) if yes]  # fmt: skip
        return "supporter.signup", extra
    if isinstance(event, EventAttended):
        return ("event.hosted" if event.role == "host" else "event.attended"), []
    if isinstance(event, TaskOutcome):
        return _OUTCOME_KINDS.get(event.outcome) or f"commitment.{event.commitment}", []
    if isinstance(event, ConsentChanged):
        return f"{event.channel}.{'opted_in' if event.granted else 'opted_out'}", []
    raise ValueError(f"no action kind for {event.topic}")


_SIMPLE: dict[type[Event], str] = {
    PetitionSigned: "petition.signed",
    EventRSVP: "event.rsvp",
    EventNoShow: "event.no_show",
    SupporterBrought: "supporter.brought",
    EmailClicked: "email.clicked",
    TrainingCompleted: "training.completed",
}
_OUTCOME_KINDS: dict[str, str] = {
    "positive": "outcome.positive",
    "neutral": "outcome.neutral",
    "negative": "outcome.negative",
    "no_answer": "outcome.no_answer",
    "wrong_number": "outcome.wrong_number",
    "reached_not_now": "outcome.not_now",
    "do_not_contact": "outcome.do_not_contact",
}
"""A task outcome's action kind; reached_committed is ``commitment.<what>`` instead."""


def action_kinds(event: Event) -> list[str]:
    """Every action kind an input event adds (used to carry actions across an identity merge)."""
    main, extra = kinds_of(event)
    return [main, *extra]
