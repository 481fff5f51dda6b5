"""The topic catalogue: every topic the pipeline uses, created up front from this list."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.events import (
    INPUT_EVENT_TYPES,
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
)

FOREVER = -1
DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    model: type[Event]
    description: str
    retention_ms: int = FOREVER
    compacted: bool = False

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
    ),
    TopicSpec("engagement.scored", EngagementScored, "Score and rung after each event."),
    TopicSpec("ladder.changed", LadderChanged, "A supporter moved up or down the ladder."),
    TopicSpec("nudge.requested", NudgeRequested, "A message a rule wants sent.", 30 * DAY_MS),
    TopicSpec("task.created", TaskCreated, "An organiser follow-up task.", 30 * DAY_MS),
    TopicSpec(
        "message.status",
        MessageStatus,
        "What became of each nudge: held, skipped (why), sent, delivered, bounced, ...",
    ),
    TopicSpec("deadletter", DeadLetter, "Events that could not be processed.", 90 * DAY_MS),
)
INPUT_TOPICS: tuple[str, ...] = tuple(t.name for t in TOPICS if t.name in INPUT_EVENT_TYPES)


def topic_spec(name: str) -> TopicSpec:
    for spec in TOPICS:
        if spec.name == name:
            return spec
    raise KeyError(name)


def json_schemas() -> dict[str, dict[str, object]]:
    """Each topic's JSON Schema, marked with its topic, key, version and retention."""
    schemas: dict[str, dict[str, object]] = {}
    for spec in TOPICS:
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
