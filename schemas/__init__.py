"""Event models: the single source of truth for topic names, keys, fields and JSON Schema."""

from schemas.catalogue import INPUT_TOPICS, TOPICS, TopicSpec, topic_spec
from schemas.events import (
    EVENT_TYPES,
    INPUT_EVENT_TYPES,
    DeadLetter,
    EngagementScored,
    Event,
    EventAttended,
    EventRSVP,
    NudgeRequested,
    PetitionSigned,
    SupporterSignup,
    TaskCreated,
    event_model,
)

__all__ = [
    "EVENT_TYPES",
    "INPUT_EVENT_TYPES",
    "INPUT_TOPICS",
    "TOPICS",
    "DeadLetter",
    "EngagementScored",
    "Event",
    "EventAttended",
    "EventRSVP",
    "NudgeRequested",
    "PetitionSigned",
    "SupporterSignup",
    "TaskCreated",
    "TopicSpec",
    "event_model",
    "topic_spec",
]
