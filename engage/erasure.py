"""A UK GDPR erasure (Article 17): ``engage erase`` and POST /v1/admin/erase.

One transaction composes the owners' parts: ``infra.consent`` suppresses every email and phone
the person had (by keyed hash) and deletes their consent records, ``producers.erasure``
deletes their contact details, identity links, aliases and ledger rows and writes the
``supporter.erased`` event and the audit row, ``consumers.erasure`` cancels their nudges and
tasks, deletes the outbox's copies and the score. A second request for the same person finds
nothing, says so, and writes an audit row all the same (no personal data in it).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from consumers import erasure as consumers_part
from infra.consent import forget_consents, suppress_contact
from infra.http import ProblemDetail, bearer_refusal, problem
from producers import erasure as producers_part

_BEARER = HTTPBearer(auto_error=False, description="The API token (ENGAGE_API_TOKEN).")
REASON = "erased (UK GDPR Article 17)"


class ErasureResult(BaseModel):
    """What an erasure did: its audit id, and rows changed per table. No personal data."""

    erasure_id: uuid.UUID
    erased_at: datetime
    already_erased: bool = Field(
        description="True when nothing of theirs was held: erased before. Nothing changed."
    )
    rows: dict[str, int] = Field(description="Rows deleted, cancelled or blanked, per table.")


class ErasureRequest(BaseModel):
    model_config = {"extra": "forbid"}
    supporter: str = Field(
        min_length=1, max_length=254, description="A supporter id, an email or a phone."
    )
    by: str = Field(default="api", min_length=1, max_length=100, description="Who asked.")


def erase(
    sessions: sessionmaker[Session],
    identity_key: str,
    who: str,
    by: str,
    now: datetime | None = None,
) -> ErasureResult | None:
    """Erase the person ``who`` names, in one transaction; None when nobody matches (nothing
    held, and no erasure of theirs on record). ValueError for a value that is not a supporter
    id, an email or a phone."""
    now = now or datetime.now(UTC)
    with sessions.begin() as session:
        subject = producers_part.read_request(session, identity_key, who)
        sid = subject.supporter_id
        if sid is None:
            return None
        if not subject.found:
            if not producers_part.erased_before(session, identity_key, sid):
                return None
            if subject.given_contact is not None:  # the address stays suppressed, whatever
                suppress_contact(session, *subject.given_contact, REASON, "erasure", now)
            erasure_id = producers_part.record_audit(
                session, identity_key, sid, by, now, {}, repeat=True
            )
            return ErasureResult(erasure_id=erasure_id, erased_at=now, already_erased=True, rows={})
        ids = producers_part.merged_ids(session, sid)
        contacts = {
            *producers_part.linked_contacts(session, ids),
            *producers_part.stored_contacts(session, identity_key, ids),
            *consumers_part.sent_to(session, ids),
            *([subject.given_contact] if subject.given_contact else []),
        }
        for channel, contact in sorted(contacts):
            suppress_contact(session, channel, contact, REASON, "erasure", now)
        rows = {
            "suppressions": len(contacts),
            "consent": forget_consents(session, ids),
            **producers_part.forget_supporter(session, ids),
            **consumers_part.forget_outputs(session, ids),
        }
        producers_part.announce_erasure(session, sid, now)
        erasure_id = producers_part.record_audit(
            session, identity_key, sid, by, now, rows, repeat=False
        )
    return ErasureResult(erasure_id=erasure_id, erased_at=now, already_erased=False, rows=rows)


def summary(result: ErasureResult) -> str:
    """What `engage erase` prints: the audit id and the counts, no personal data."""
    if result.already_erased:
        return f"erasure {result.erasure_id}: nothing held, erased before"
    counts = ", ".join(f"{table} {n}" for table, n in result.rows.items())
    return f"erasure {result.erasure_id}: {counts}"


def erasure_router(sessions: sessionmaker[Session], identity_key: str, token: str) -> APIRouter:
    router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Security(_BEARER)])
    body = ErasureRequest.model_json_schema()

    @router.post(
        "/erase",
        summary="Erase a person (UK GDPR Article 17)",
        description=(
            "`supporter` is a supporter id, an email or a phone. Their contact details, identity"
            " links, consent records and events are deleted, unsent nudges and open tasks"
            " cancelled, their score deleted and every address they had suppressed; the stream"
            " drops their state. Repeating it changes nothing (`already_erased`)."
        ),
        response_model=ErasureResult,
        responses={
            400: {"model": ProblemDetail, "description": "Malformed JSON."},
            401: {
                "model": ProblemDetail,
                "description": "Missing or wrong bearer token.",
                "headers": {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}},
            },
            404: {"model": ProblemDetail, "description": "Nobody matches."},
            422: {
                "model": ProblemDetail,
                "description": "Not a supporter id, an email or a phone; or a malformed body.",
            },
        },
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}}
        },
    )
    async def erase_supporter(request: Request) -> JSONResponse:
        refused = bearer_refusal(request, token)
        if refused is not None:
            return refused
        try:
            payload: Any = json.loads(await request.body())
        except (ValueError, RecursionError) as exc:
            return problem(400, "body", f"malformed JSON: {type(exc).__name__}")
        try:
            asked = ErasureRequest.model_validate(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            return problem(422, ".".join(map(str, first["loc"])) or "body", first["msg"])
        try:
            result = await run_in_threadpool(
                erase, sessions, identity_key, asked.supporter, asked.by
            )
        except ValueError:
            return problem(422, "supporter", "not a supporter id, an email or a phone")
        if result is None:
            return problem(404, "supporter", "nobody matches")
        return JSONResponse(result.model_dump(mode="json"))

    return router
