"""An example message of each topic, built from its model with fixed values: what the catalogue
shows analysts, exactly as it is on the wire (``model_dump_json``), and the same every time.

A new required field needs a value here (the model refuses the example without one, and
``tests/unit/test_asyncapi.py`` fails); each example is validated against its JSON Schema there.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from schemas.catalogue import TopicSpec

_NAMESPACE = uuid.UUID("6c1f0d2e-3a4b-4c5d-8e6f-7a8b9c0d1e2f")
SUPPORTER = "sup_6f1c2a9e4b7d4e0a8c3b5d7e9f1a2b3c"
OTHER_SUPPORTER = "sup_0b9e8d7c6b5a49382716f5e4d3c2b1a0"
MEETING = "hackney-2025-03-06"
CAUSE = "0f4a6c2e-8b1d-4f3a-9c5e-7d2b4a6c8e0f"
PERSON = "p_3e9a1c7b5d2f4a6e8c0b1d3f5a7e9c2b"

FIXED: dict[str, Any] = {
    "event_time": "2025-03-06T21:15:00Z",
    "supporter_id": SUPPORTER,
    "area": "Hackney",
    "district": "E8",
    "source": "website",
    "consent_email": True,
    "consent_sms": False,
    "consent_wording": "2025-01",
    "timezone": "Europe/London",
    "petition_id": "clean-air-e8",
    "petition_title": "Clean air outside our schools",
    "meeting_id": MEETING,
    "meeting_title": "Hackney monthly meeting",
    "meeting_starts_at": "2025-03-06T19:00:00Z",
    "role": "attendee",
    "brought_supporter_id": OTHER_SUPPORTER,
    "task_id": f"first-meeting-follow-up:{SUPPORTER}",
    "outcome": "reached_committed",
    "commitment": "meeting",
    "training": "one-to-ones",
    "nudge_id": f"first-meeting-thanks:{SUPPORTER}",
    "url": "https://example.org/next-meeting",
    "channel": "email",
    "granted": False,
    "wording_version": "2025-01",
    "survivor_id": SUPPORTER,
    "absorbed_id": OTHER_SUPPORTER,
    "score": 7.5,
    "rung": "attendee",
    "previous_rung": "signer",
    "cause_event_id": CAUSE,
    "half_life_days": 90.0,
    "direction": "up",
    "reason": "Came to a meeting in the last 90 days.",
    "template": "thanks_first_meeting",
    "rule": "first-meeting-thanks",
    "context": {"meeting_title": "Hackney monthly meeting"},
    "holdout": False,
    "kind": "first_meeting_follow_up",
    "due_at": "2025-03-08T21:15:00Z",
    "priority": "high",
    "status": "delivered",
    "provider": "sendgrid",
    "provider_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
    "source_topic": "event.attended",
    "partition": 1,
    "offset": 4711,
    "source_key": SUPPORTER,
    "error": "event_time: Input should have timezone info",
    "payload": '{"supporter_id": "' + SUPPORTER + '", "event_time": "2025-03-06T21:15:00"}',
    "consumer": "stream",
    "person": PERSON,
    "key_id": "k1",
}
"""A value per field name, for whichever models have the field."""

PER_TOPIC: dict[str, dict[str, Any]] = {
    "consent.changed": {"source": "unsubscribe_link"},
    "identity.merged": {
        "role": "survivor",
        "actions": [
            {
                "event_id": "5b7d9f1a-3c5e-4a7b-9d1f-3a5c7e9b1d3f",
                "type": "petition.signed",
                "kind": "petition",
                "event_time": "2025-02-11T08:40:00Z",
                "area": "Hackney",
            }
        ],
    },
    "ladder.changed": {"reason": "Came to a meeting in the last 90 days."},
    "task.created": {
        "reason": "Came to a first meeting: call to thank them and ask what brought them.",
        "rule": "first-meeting-follow-up",
    },
    "message.status": {"reason": None, "rule": "first-meeting-thanks"},
    "analytics.actions": {
        "type": "event.attended",
        **dict.fromkeys(
            (
                "source",
                "petition_id",
                "training",
                "task_id",
                "outcome",
                "commitment",
                "channel",
                "granted",
            )
        ),
    },
    "analytics.nudges": {"nudge_id": f"first-meeting-thanks:{PERSON}"},
    "analytics.messages": {
        "nudge_id": f"first-meeting-thanks:{PERSON}",
        "rule": "first-meeting-thanks",
    },
    "analytics.tasks": {
        "task_id": f"first-meeting-follow-up:{PERSON}",
        "rule": "first-meeting-follow-up",
    },
}
"""Where a field name means something else in one topic."""


def example_message(spec: TopicSpec) -> dict[str, Any]:
    """A valid record of ``spec``'s topic, as its model writes it on the wire."""
    fields = spec.model.model_fields
    values = {name: value for name, value in FIXED.items() if name in fields}
    values.update(PER_TOPIC.get(spec.name, {}))
    values["event_id"] = str(uuid.uuid5(_NAMESPACE, spec.name))
    message: dict[str, Any] = json.loads(spec.model.model_validate(values).model_dump_json())
    return message
