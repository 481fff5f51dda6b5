"""A UK GDPR subject access request: everything held about a person as one JSON document.

The document's schema is the ``SubjectAccessExport`` model below (committed as
``docs/export.schema.json``; regenerate with ``python -m engage.export > docs/export.schema.json``).
The reads are the owners': ``producers.export`` (contact details, links, consent, suppressions,
ledger events) and ``consumers.export`` (score, nudges, tasks); the explanation is
``streams.explain``'s. This module only composes them (composition root).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from consumers import export as held_by_consumers
from infra.http import ProblemDetail, bearer_refusal, problem
from producers import export as held_by_producers
from streams.engagement import Engine
from streams.explain import UnknownSupporter, explain

SCHEMA_VERSION: Literal[1] = 1
_BEARER = HTTPBearer(auto_error=False, description="The API token (ENGAGE_API_TOKEN).")
RUNG_HISTORY_NOTE = (
    "Only the current rung is stored; the history is the rung after each of the person's "
    "events, recomputed from the events by the scoring code (see explanation)."
)


class ContactDetails(BaseModel):
    """The ``supporters`` row: contact details, never carried on a topic."""

    email: str | None
    phone: str | None = Field(description="E.164.")
    first_name: str | None
    last_name: str | None
    postcode: str | None
    area: str | None
    timezone: str | None = Field(description="IANA zone; null: the default (Europe/London).")
    created_at: datetime
    updated_at: datetime


class MergedId(BaseModel):
    """A supporter id of theirs merged into this one (an email and a phone found to match)."""

    supporter_id: str
    merged_at: datetime
    event_id: uuid.UUID = Field(description="The event that linked the two.")


class IdentityLinkHeld(BaseModel):
    """That an email or phone of theirs is linked to them. The link is a keyed hash of the
    address (not the address), so only its kind and date are shown."""

    kind: Literal["email", "phone"]
    linked_at: datetime


class ConsentHeld(BaseModel):
    """One consent decision; the newest per channel is the one that counts."""

    channel: Literal["email", "sms"]
    granted: bool
    source: str = Field(description="signup, form, unsubscribe_link, sms_stop, organiser, ...")
    wording_version: str | None = Field(description="The consent wording they were shown.")
    recorded_at: datetime
    event_id: uuid.UUID | None


class SuppressionHeld(BaseModel):
    """Their email or phone on a do-not-contact list (found by the address's keyed hash)."""

    channel: Literal["email", "sms"]
    reason: str
    source: str
    created_at: datetime
    lifted_at: datetime | None
    lifted_by: str | None


class EventHeld(BaseModel):
    """One event in the ledger keyed by one of their ids, as it was recorded."""

    event_id: uuid.UUID
    topic: str
    supporter_id: str = Field(description="The id it was keyed by (theirs, or one merged in).")
    event_time: datetime | None = Field(description="When it happened, as reported.")
    accepted_at: datetime = Field(description="When the pipeline accepted it.")
    payload: dict[str, Any] = Field(description="The event as recorded (its topic's schema).")


class StoredScore(BaseModel):
    """The newest score and rung the pipeline stored for them."""

    score: float
    rung: str
    as_of: datetime
    cause_event_id: uuid.UUID
    updated_at: datetime


class RungStep(BaseModel):
    at: datetime
    rung: str
    event_id: str = Field(description="The event after which they were on this rung.")


class MessageHeld(BaseModel):
    """A message written to the local outbox (embedded mode) for a nudge."""

    to_address: str
    subject: str | None
    body: str
    created_at: datetime


class NudgeHeld(BaseModel):
    """A message the pipeline asked to send them, and what became of it."""

    nudge_id: str
    supporter_id: str
    channel: Literal["email", "sms"]
    template: str
    rule: str = Field(description="The playbook rule that asked for it.")
    context: dict[str, Any]
    requested_at: datetime
    status: str = Field(description="pending, held, sending, sent, failed, skipped, ...")
    reason_code: str | None
    reason: str | None
    attempts: int
    sent_at: datetime | None
    provider: str | None
    delivery_status: str | None = Field(description="The provider's later report.")
    delivery_updated_at: datetime | None
    message: MessageHeld | None


class TaskOutcomeHeld(BaseModel):
    event_id: uuid.UUID
    event_time: datetime
    outcome: str
    commitment: str | None = Field(default=None, description="With reached_committed.")
    notes: str | None


class TaskChangeHeld(BaseModel):
    """One line of a task's history: what changed, when, by whom (an organiser's id, or
    playbook, system, erasure), and an organiser's note on an outcome."""

    at: datetime
    by: str
    action: str
    detail: dict[str, Any]
    note: str | None


class TaskHeld(BaseModel):
    """An organiser's follow-up about them, and the outcomes recorded for it."""

    task_id: str
    supporter_id: str
    kind: str
    reason: str
    due_at: datetime
    area: str | None
    rule: str
    priority: str
    status: str
    created_at: datetime
    outcomes: list[TaskOutcomeHeld]
    history: list[TaskChangeHeld] = Field(
        default_factory=list, description="Every change, oldest first (the organisers' queue)."
    )


class SubjectAccessExport(BaseModel):
    """Everything the pipeline holds about one person (UK GDPR Article 15)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    generated_at: datetime
    supporter_id: str = Field(description="Their current id (after any merge).")
    contact: ContactDetails | None
    merged_ids: list[MergedId]
    identity_links: list[IdentityLinkHeld]
    consents: list[ConsentHeld]
    suppressions: list[SuppressionHeld]
    events: list[EventHeld]
    score: StoredScore | None
    explanation: dict[str, Any] | None = Field(
        description="Why the score and rung are what they are (as `engage explain --json`);"
        " null when no event is held."
    )
    rung_history: list[RungStep]
    rung_history_note: str
    nudges: list[NudgeHeld]
    tasks: list[TaskHeld]


def subject_access_export(
    sessions: sessionmaker[Session],
    engine: Engine,
    identity_key: str,
    who: str,
    now: datetime | None = None,
) -> SubjectAccessExport | None:
    """The document for the person ``who`` names (an id, an email or a phone), or None."""
    at = now or datetime.now(UTC)
    with sessions() as session:
        sid = held_by_producers.find_supporter(session, identity_key, who)
        if sid is None:
            return None
        merged = held_by_producers.merged_into(session, sid)
        ids = [sid, *(m["supporter_id"] for m in merged)]
        contact = held_by_producers.contact_details(session, sid)
        nudges = held_by_consumers.nudges(session, ids)
        keys = held_by_producers.address_keys(
            identity_key, (contact or {}).get("email"), (contact or {}).get("phone")
        )
        keys += [(n["channel"], n["recipient"]) for n in nudges if n["recipient"]]
        events = held_by_producers.ledger_events(session, ids)
        document: dict[str, Any] = {
            "generated_at": at,
            "supporter_id": sid,
            "contact": contact,
            "merged_ids": merged,
            "identity_links": held_by_producers.identity_links(session, ids),
            "consents": held_by_producers.consents(session, ids),
            "suppressions": held_by_producers.suppressions(session, keys),
            "events": events,
            "score": held_by_consumers.stored_score(session, sid),
            "nudges": nudges,
            "tasks": _with_outcomes(held_by_consumers.tasks(session, ids), events),
        }
    try:
        explanation: dict[str, Any] | None = explain(sessions, engine, sid, at.timestamp())
    except UnknownSupporter:
        explanation = None
    document["explanation"] = explanation
    document["rung_history"] = _rung_history(explanation)
    document["rung_history_note"] = RUNG_HISTORY_NOTE
    return SubjectAccessExport.model_validate(document)


def _with_outcomes(tasks: list[dict[str, Any]], events: list[dict[str, Any]]) -> list[Any]:
    outcomes: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        if event["topic"] == "task.outcome":
            payload = event["payload"]
            outcomes.setdefault(payload["task_id"], []).append(
                {
                    "event_id": event["event_id"],
                    "event_time": payload["event_time"],
                    "outcome": payload["outcome"],
                    "commitment": payload.get("commitment"),
                    "notes": payload.get("notes"),
                }
            )
    return [{**task, "outcomes": outcomes.get(task["task_id"], [])} for task in tasks]


def _rung_history(explanation: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each change of rung in the explanation's trace (the first rung included)."""
    steps: list[dict[str, Any]] = []
    for entry in (explanation or {}).get("events", []):
        rung = entry.get("rung")
        if rung and (not steps or steps[-1]["rung"] != rung):
            steps.append({"at": entry["at"], "rung": rung, "event_id": str(entry["event_id"])})
    return steps


def export_json_schema() -> dict[str, Any]:
    """The document's JSON Schema, as committed in ``docs/export.schema.json``."""
    return SubjectAccessExport.model_json_schema()


def export_router(
    sessions: sessionmaker[Session], engine: Engine, identity_key: str, token: str
) -> APIRouter:
    router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Security(_BEARER)])

    @router.get(
        "/export/{supporter}",
        summary="A subject access request: everything held about a person",
        description="`supporter` is a supporter id, an email or a phone.",
        response_model=SubjectAccessExport,
        responses={
            401: {
                "model": ProblemDetail,
                "description": "Missing or wrong bearer token.",
                "headers": {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}},
            },
            404: {"model": ProblemDetail, "description": "Nobody matches."},
        },
    )
    async def export_supporter(supporter: str, request: Request) -> JSONResponse:
        refused = bearer_refusal(request, token)
        if refused is not None:
            return refused
        document = await run_in_threadpool(
            subject_access_export, sessions, engine, identity_key, supporter
        )
        if document is None:
            return problem(404, "supporter", "nobody matches")
        return JSONResponse(document.model_dump(mode="json"))

    return router


if __name__ == "__main__":
    print(json.dumps(export_json_schema(), indent=2))
