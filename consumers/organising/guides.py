"""A short call guide per kind of follow-up task (the kinds the default playbook's rules
create, ``streams/playbooks/default.yaml``): what the call is for and three things to do.
A kind without its own guide (a playbook's new rule) gets the general one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CallGuide:
    title: str
    purpose: str
    steps: tuple[str, ...]


GENERAL = CallGuide(
    "Follow-up call",
    "Keep in touch and find the next step that suits them.",
    (
        "Say who you are and which group you are calling from.",
        "Ask how they are and listen more than you talk.",
        "Offer one concrete next step, and record what they said.",
    ),
)

GUIDES: dict[str, CallGuide] = {
    "first_meeting_follow_up": CallGuide(
        "Thank a first-timer",
        "They came to their first meeting: call within 48 hours, while it is fresh.",
        (
            "Thank them for coming, and ask what brought them.",
            "Ask what they thought of the meeting and what matters to them.",
            "Invite them to the next meeting, or to bring someone along.",
        ),
    ),
    "one_to_one": CallGuide(
        "Set up a one-to-one",
        "A new regular (three meetings in 90 days): meet them one-to-one within a week.",
        (
            "Congratulate them on being a regular and say why that matters to the group.",
            "Arrange a time to meet one-to-one and hear their story.",
            "Ask what they would like to take on.",
        ),
    ),
    "leadership_ask": CallGuide(
        "Ask them to lead",
        "They bring people or host: ask them to lead an action or a team.",
        (
            "Name what they have already done for the group.",
            "Ask them to lead something specific, with a date.",
            "Offer the leadership training and support from you.",
        ),
    ),
    "check_in": CallGuide(
        "Check in",
        "A regular has not been seen for 60 days.",
        (
            "Say you noticed they have not been around, and that they are missed.",
            "Listen: ask what has changed, without guilt.",
            "Invite them back to something soon and easy.",
        ),
    ),
}


def guide_for(kind: str) -> CallGuide:
    return GUIDES.get(kind, GENERAL)
