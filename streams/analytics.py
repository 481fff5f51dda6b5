"""Analytics records: an operational record mirrored for analysts, the person pseudonymised.

Pure: no I/O, no clock. ``analytics_record`` maps one record of an input or output topic to
its ``analytics.*`` record (or None: nothing for analysts), keeping the source's ``event_id``
and ``event_time``; the worker around it is ``streams/analytics_worker.py``.

What an analytics record never carries: the supporter id (the person is ``pseudonym``, a keyed
HMAC under the analytics key, and a supporter id inside a nudge or task id is replaced by its
pseudonym), an email, a phone, a name, a full postcode, or free text (outcome notes, a task's
reason, a nudge's context, a clicked URL, titles).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Container
from dataclasses import dataclass, field

from schemas.events import (
    ANALYTICS_EVENT_TYPES,
    EVENT_TYPES,
    AnalyticsAction,
    AnalyticsErased,
    AnalyticsMessage,
    AnalyticsNudge,
    AnalyticsRecord,
    AnalyticsScore,
    AnalyticsTask,
    ConsentChanged,
    EmailClicked,
    EngagementScored,
    Event,
    EventAttended,
    EventNoShow,
    EventRSVP,
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

_SUPPORTER_ID = re.compile(r"sup_[0-9a-f]{32}")


@dataclass(frozen=True)
class AnalyticsKey:
    """The key pseudonyms are made with, and its id (carried on every record as ``key_id``).
    A new key with a new id is a rotation: pseudonyms made with it cannot be linked to those
    made with the old one. The key is left out of ``repr``, so it is never logged by accident.
    """

    secret: str = field(repr=False)
    key_id: str

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("the analytics key is empty")


def pseudonym(key: AnalyticsKey, supporter_id: str) -> str:
    """``"p_"`` and the first 128 bits (32 hex digits) of HMAC-SHA256(key, supporter id): the
    same supporter gets the same pseudonym under one key, on every analytics topic; without the
    key nobody can tell which supporter id it stands for, nor compute it from one."""
    digest = hmac.new(key.secret.encode(), supporter_id.encode(), hashlib.sha256).hexdigest()
    return f"p_{digest[:32]}"


def pseudonymised_id(key: AnalyticsKey, natural_id: str) -> str:
    """A nudge or task id with every supporter id in it replaced by its pseudonym (the stream
    builds them as ``rule:supporter_id[:window]``): still unique, still the same on a replay,
    and joinable across analytics topics, but no longer naming the supporter."""
    return _SUPPORTER_ID.sub(lambda m: pseudonym(key, m.group()), natural_id)


def analytics_record(
    topic: str,
    payload: bytes | str | Event,
    key: AnalyticsKey,
    erased: Container[str] = frozenset(),
) -> AnalyticsRecord | None:
    """The analytics record of a record of ``topic`` (its decoded event, or its JSON value,
    validated against the topic's model: pydantic's ValidationError if it does not fit), or
    None when analysts get nothing of it: ``identity.merged``, ``ladder.changed``, an
    ``analytics.*`` or unknown topic, or a record of a supporter id in ``erased`` (the ids
    whose ``supporter.erased`` has been seen: nothing of theirs reaches analysts after it)."""
    model = EVENT_TYPES.get(topic)
    if model is None or topic in ANALYTICS_EVENT_TYPES:
        return None
    event = payload if isinstance(payload, Event) else model.model_validate_json(payload)
    if not isinstance(event, model):
        raise TypeError(f"a {type(event).__name__} is not a record of {topic!r}")
    if not isinstance(event, SupporterErased) and event.key() in erased:
        return None
    common = {
        "event_id": event.event_id,
        "event_time": event.event_time,
        "key_id": key.key_id,
        "person": pseudonym(key, event.key()),  # the supporter id: every mirrored topic's key
    }
    if isinstance(event, EngagementScored):
        return AnalyticsScore(
            **common,
            score=event.score,
            rung=event.rung,
            previous_rung=event.previous_rung,
            cause_event_id=event.cause_event_id,
        )
    if isinstance(event, NudgeRequested):
        return AnalyticsNudge(
            **common,
            nudge_id=pseudonymised_id(key, event.nudge_id),
            rule=event.rule,
            channel=event.channel,
            template=event.template,
            holdout=event.holdout,
            cause_event_id=event.cause_event_id,
        )
    if isinstance(event, MessageStatus):
        return AnalyticsMessage(
            **common,
            nudge_id=pseudonymised_id(key, event.nudge_id),
            channel=event.channel,
            rule=event.rule,
            status=event.status,
            reason_code=event.reason_code,
        )
    if isinstance(event, TaskCreated):
        return AnalyticsTask(
            **common,
            task_id=pseudonymised_id(key, event.task_id),
            kind=event.kind,
            rule=event.rule,
            priority=event.priority,
            holdout=event.holdout,
            due_at=event.due_at,
            area=event.area,
            cause_event_id=event.cause_event_id,
        )
    if isinstance(event, SupporterErased):
        return AnalyticsErased(**common)
    facts = _action_facts(event, key)
    if facts is None:
        return None
    return AnalyticsAction(**common, **facts)


def _action_facts(event: Event, key: AnalyticsKey) -> dict[str, object] | None:
    """An input event's type and facts, as ``analytics.actions`` carries them."""
    if isinstance(
        event, SupporterSignup | PetitionSigned | EventRSVP | EventAttended | EventNoShow
    ):
        facts: dict[str, object] = {"district": event.district, "area": event.area}
        if isinstance(event, SupporterSignup):
            facts["source"] = event.source
        elif isinstance(event, PetitionSigned):
            facts["petition_id"] = event.petition_id
        else:
            facts["meeting_id"] = event.meeting_id
            if isinstance(event, EventAttended):
                facts["role"] = event.role
        return {"type": event.type, **facts}
    if isinstance(event, TrainingCompleted):
        return {"type": event.type, "training": event.training}
    if isinstance(event, TaskOutcome):
        return {
            "type": event.type,
            "task_id": pseudonymised_id(key, event.task_id),
            "outcome": event.outcome,
            "commitment": event.commitment,
        }
    if isinstance(event, EmailClicked):
        return {"type": event.type}
    if isinstance(event, ConsentChanged):
        return {
            "type": event.type,
            "channel": event.channel,
            "granted": event.granted,
            "source": event.source,
        }
    if isinstance(event, SupporterBrought):
        return {"type": event.type, "meeting_id": event.meeting_id}
    return None  # identity.merged, ladder.changed, deadletter: nothing for analysts
