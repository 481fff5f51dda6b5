"""The topic catalogue: every topic the pipeline uses, created up front from this list."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from schemas.events import (
    INPUT_EVENT_TYPES,
    AnalyticsAction,
    AnalyticsErased,
    AnalyticsMessage,
    AnalyticsNudge,
    AnalyticsScore,
    AnalyticsTask,
    ConsentChanged,
    DeadLetter,
    EmailClicked,
    EngagementScored,
    Event,
    EventAttended,
    EventNoShow,
    EventRSVP,
    IdentityMerged,
    LadderChanged,
    MessageStatus,
    NudgeRequested,
    PetitionSigned,
    SupporterBrought,
    SupporterErased,
    SupporterSignup,
    TaskCreated,
    TaskOutcome,
    TrainingCompleted,
)

FOREVER = -1
DAY_MS = 24 * 3600 * 1000

RETENTION_DEFAULT_DAYS: dict[str, int] = {
    "events": 730,
    "scores": 730,
    "nudges": 730,
    "requests": 30,
    "deadletter": 90,
    "forever": 0,
}
"""How long each retention period keeps a topic's records, in days (0: forever), unless the
settings say otherwise (``ENGAGE_RETENTION_EVENTS_DAYS``...); the ledger keeps its rows of a
topic exactly as long. ``events``: what supporters did (the input topics); ``scores``: what the
stream derived from it; ``nudges``: what became of each message; ``requests``: the stream's
requests, which the consumers store within seconds; ``deadletter``: records that could not be
processed; ``forever``: ``supporter.erased``, which keeps an erased id ignored. Why these
periods: docs/privacy.md, "Retention"."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    model: type[Event]
    description: str
    retention: str = "events"
    """Which retention period applies: a key of ``RETENTION_DEFAULT_DAYS``."""
    compacted: bool = False
    retention_days: int | None = None
    """Days a record is kept (0: forever); None: the period's default (``with_retention``
    sets it from the settings)."""

    @property
    def retention_ms(self) -> int:
        days = self.retention_days
        if days is None:
            days = RETENTION_DEFAULT_DAYS[self.retention]
        return days * DAY_MS if days else FOREVER

    @property
    def key(self) -> str:
        return self.model.key_field

    def configs(self) -> dict[str, str]:
        return {
            "cleanup.policy": "compact" if self.compacted else "delete",
            "retention.ms": str(self.retention_ms),
        }


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("supporter.signup", SupporterSignup, "A person joined; carries consent."),
    TopicSpec("petition.signed", PetitionSigned, "A person signed a petition."),
    TopicSpec("event.rsvp", EventRSVP, "A person said they will come to a meeting."),
    TopicSpec("event.attended", EventAttended, "A person came to (or hosted) a meeting."),
    TopicSpec("event.no_show", EventNoShow, "A person said they would come and did not."),
    TopicSpec("supporter.brought", SupporterBrought, "A person brought someone to a meeting."),
    TopicSpec("task.outcome", TaskOutcome, "How an organiser's follow-up went."),
    TopicSpec("email.clicked", EmailClicked, "A click on a link in one of our emails."),
    TopicSpec("consent.changed", ConsentChanged, "Consent given or withdrawn after signup."),
    TopicSpec("identity.merged", IdentityMerged, "Two supporter ids found to be one person."),
    TopicSpec(
        "supporter.erased",
        SupporterErased,
        "A supporter was erased: the stream drops their state and ignores their id after.",
        "forever",
    ),
    TopicSpec(
        "training.completed", TrainingCompleted, "A supporter completed a training (organiser)."
    ),
    TopicSpec("engagement.scored", EngagementScored, "Score and rung after each event.", "scores"),
    TopicSpec(
        "ladder.changed", LadderChanged, "A supporter moved up or down the ladder.", "scores"
    ),
    TopicSpec("nudge.requested", NudgeRequested, "A message a rule wants sent.", "requests"),
    TopicSpec("task.created", TaskCreated, "An organiser follow-up task.", "requests"),
    TopicSpec(
        "message.status",
        MessageStatus,
        "What became of each nudge: held, skipped (why), sent, delivered, bounced, ...",
        "nudges",
    ),
    TopicSpec("deadletter", DeadLetter, "Events that could not be processed.", "deadletter"),
    TopicSpec(
        "analytics.actions",
        AnalyticsAction,
        "For analysts: what a person did (pseudonym, district and area, the event's facts).",
    ),
    TopicSpec(
        "analytics.scores",
        AnalyticsScore,
        "For analysts: a person's score and rung after each event (pseudonym).",
        "scores",
    ),
    TopicSpec(
        "analytics.nudges",
        AnalyticsNudge,
        "For analysts: each nudge a rule asked for, with its rule and hold-out group.",
        "nudges",
    ),
    TopicSpec(
        "analytics.messages",
        AnalyticsMessage,
        "For analysts: what became of each nudge (status, reason code).",
        "nudges",
    ),
    TopicSpec(
        "analytics.tasks",
        AnalyticsTask,
        "For analysts: each follow-up task a rule asked for, with its rule and hold-out group.",
        "nudges",
    ),
    TopicSpec(
        "analytics.erased",
        AnalyticsErased,
        "For analysts: a person was erased; delete every row of that pseudonym.",
        "forever",
    ),
)
INPUT_TOPICS: tuple[str, ...] = tuple(t.name for t in TOPICS if t.name in INPUT_EVENT_TYPES)
ANALYTICS_TOPICS: tuple[str, ...] = tuple(t.name for t in TOPICS if t.name.startswith("analytics."))


def with_retention(
    days: Mapping[str, int], specs: tuple[TopicSpec, ...] = TOPICS
) -> tuple[TopicSpec, ...]:
    """The catalogue with each topic's ``retention.ms`` from ``days`` (days per retention
    period, as ``RETENTION_DEFAULT_DAYS`` names them; 0: forever); a period ``days`` does not
    name keeps its default."""
    periods = {**RETENTION_DEFAULT_DAYS, **days}
    return tuple(replace(spec, retention_days=periods[spec.retention]) for spec in specs)


def topic_spec(name: str) -> TopicSpec:
    for spec in TOPICS:
        if spec.name == name:
            return spec
    raise KeyError(name)


def json_schemas(specs: tuple[TopicSpec, ...] = TOPICS) -> dict[str, dict[str, Any]]:
    """Each topic's JSON Schema, marked with its topic, key, version and retention."""
    schemas: dict[str, dict[str, Any]] = {}
    for spec in specs:
        schema = spec.model.model_json_schema()
        schema.update(
            {
                "$id": f"urn:engage:topic:{spec.name}:v{spec.model.version}",
                "x-topic": spec.name,
                "x-key": spec.key,
                "x-version": spec.model.version,
                "x-retention-ms": spec.retention_ms,
                "description": spec.description,
            }
        )
        schemas[spec.name] = schema
    return schemas
