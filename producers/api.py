"""The HTTP ingest API: validate events, commit them to the ledger, answer 202 or a clear 4xx."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from fastapi import APIRouter, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from infra.http import FieldError, ProblemDetail, bearer_refusal, problem
from producers.ledger import IdentityConflict, Ingested, ingest_events
from schemas.events import INGEST_TO_TOPIC, Event, IngestEvent

log = structlog.get_logger(__name__)
_INGEST = TypeAdapter(IngestEvent)
MAX_FUTURE = timedelta(days=1)
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
INGEST_TYPES = frozenset(model.topic for model in INGEST_TO_TOPIC.values())
# Puts the bearer scheme in the OpenAPI document; the check itself is bearer_refusal's.
_BEARER = HTTPBearer(auto_error=False, description="The API token (ENGAGE_API_TOKEN).")


class Rejected(BaseModel):
    index: int
    errors: list[FieldError]


class IngestResult(BaseModel):
    """What became of each event: accepted, a repeat of one accepted before, or rejected."""

    accepted: list[uuid.UUID] = []
    duplicates: list[uuid.UUID] = []
    rejected: list[Rejected] = []


@dataclass
class IngestService:
    sessions: sessionmaker[Session]
    identity_key: str
    token: str
    max_batch: int = 1000

    def parse(self, payload: Any, prefix: str) -> Event | list[FieldError]:
        """Validate one posted event (an ingest model, not yet keyed); or say what is wrong."""
        try:
            parsed = _INGEST.validate_python(payload)
        except ValidationError as exc:
            return [
                FieldError(
                    field=_field(prefix, ("type",) if "union_tag" in err["type"] else err["loc"]),
                    reason=err["msg"],
                )
                for err in exc.errors(include_url=False)
            ]
        if parsed.event_time > datetime.now(UTC) + MAX_FUTURE:
            return [FieldError(field=_field(prefix, ("event_time",)), reason="in the future")]
        if parsed.event_time < EARLIEST:
            return [FieldError(field=_field(prefix, ("event_time",)), reason="before 2000")]
        return parsed

    def ingest(self, payloads: list[Any], prefix: str) -> IngestResult:
        result = IngestResult()
        indices: list[int] = []
        events: list[Event] = []
        for index, payload in enumerate(payloads):
            outcome = self.parse(payload, prefix.format(index=index))
            if isinstance(outcome, list):
                result.rejected.append(Rejected(index=index, errors=outcome))
            else:
                indices.append(index)
                events.append(outcome)
        if events:
            ingested = self._commit(events)
            result.accepted, result.duplicates = ingested.accepted, ingested.duplicates
            for position in ingested.unknown_supporter:
                index = indices[position]
                field = _field(prefix.format(index=index), ("supporter_id",))
                error = FieldError(field=field, reason="no such supporter")
                result.rejected.append(Rejected(index=index, errors=[error]))
            result.rejected.sort(key=lambda r: r.index)
        return result

    def _commit(self, events: list[Event]) -> Ingested:
        now = datetime.now(UTC)
        for attempt in range(3):
            try:
                with self.sessions.begin() as session:
                    return ingest_events(session, events, now, self.identity_key)
            except (IntegrityError, IdentityConflict, OperationalError) as exc:
                # Another request committed one of these ids or links meanwhile, or the two
                # deadlocked (PostgreSQL picks one to fail): look again.
                if attempt == 2 or not _retryable(exc):
                    raise
        raise AssertionError("unreachable")


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, OperationalError):
        # PostgreSQL's serialization failure and deadlock; other errors are not transient.
        return getattr(exc.orig, "pgcode", None) in {"40001", "40P01"}
    return True


def _field(prefix: str, loc: tuple[int | str, ...]) -> str:
    # Drop the discriminator tag pydantic puts first in the location of a union member.
    parts = [str(p) for p in (loc[1:] if loc and loc[0] in INGEST_TYPES else loc)]
    path = ".".join(parts)
    return f"{prefix}.{path}" if prefix and path else (prefix or path or "body")


def ingest_router(service: IngestService) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["ingest"], dependencies=[Security(_BEARER)])
    max_body = service.max_batch * 4096
    problems: dict[int | str, dict[str, Any]] = {
        400: {
            "model": ProblemDetail,
            "description": "Malformed JSON, or text with a NUL character (\\u0000).",
        },
        401: {
            "model": ProblemDetail,
            "description": "Missing or wrong bearer token.",
            "headers": {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}},
        },
        413: {"model": ProblemDetail, "description": f"Body larger than {max_body} bytes."},
        422: {"model": IngestResult, "description": "Some events rejected; valid ones kept."},
    }

    async def read_json(request: Request) -> Any | JSONResponse:
        refused = bearer_refusal(request, service.token)
        if refused is not None:
            return refused
        body = await request.body()
        if len(body) > max_body:
            return problem(413, "body", f"larger than {max_body} bytes")
        if b"\\u0000" in body:
            return problem(400, "body", "NUL characters (\\u0000) are not allowed in text")
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return problem(400, "body", f"malformed JSON: {exc}")
        except RecursionError:
            return problem(400, "body", "malformed JSON: nested too deeply")
        except ValueError as exc:  # e.g. an integer with more digits than Python allows
            return problem(400, "body", f"malformed JSON: {exc}")

    def answer(result: IngestResult) -> JSONResponse:
        log.info(
            "ingest",
            accepted=len(result.accepted),
            duplicates=len(result.duplicates),
            rejected=len(result.rejected),
        )
        status = 422 if result.rejected else 202
        return JSONResponse(result.model_dump(mode="json"), status_code=status)

    @router.post(
        "/events",
        status_code=202,
        response_model=IngestResult,
        response_description="Every event accepted, or a repeat of one accepted before.",
        responses=problems,
        openapi_extra={"requestBody": _body("#/components/schemas/IngestEvent")},
        summary="Post one event",
    )
    async def post_event(request: Request) -> JSONResponse:
        payload = await read_json(request)
        if isinstance(payload, JSONResponse):
            return payload
        return answer(await run_in_threadpool(service.ingest, [payload], ""))

    @router.post(
        "/events/batch",
        status_code=202,
        response_model=IngestResult,
        response_description="Every event accepted, or a repeat of one accepted before.",
        responses={
            **problems,
            413: {
                "model": ProblemDetail,
                "description": f"Body larger than {max_body} bytes,"
                f" or more than {service.max_batch} events.",
            },
            422: {
                "model": IngestResult | ProblemDetail,
                "description": "Some events rejected, valid ones kept (IngestResult); or no"
                " list 'events' in the body (ProblemDetail).",
            },
        },
        openapi_extra={"requestBody": _batch_body(service.max_batch)},
        summary="Post a batch of events; valid ones are kept even when others are rejected",
    )
    async def post_batch(request: Request) -> JSONResponse:
        payload = await read_json(request)
        if isinstance(payload, JSONResponse):
            return payload
        events = payload.get("events") if isinstance(payload, dict) else None
        if not isinstance(events, list):
            return problem(422, "events", "a JSON object with a list 'events' is required")
        if len(events) > service.max_batch:
            return problem(
                413, "events", f"at most {service.max_batch} events a batch, got {len(events)}"
            )
        return answer(await run_in_threadpool(service.ingest, events, "events[{index}]"))

    return router


def _body(ref: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": ref}}}}


def _batch_body(max_batch: int) -> dict[str, Any]:
    """The batch body, inline: its limit is the service's setting."""
    events = {"type": "array", "items": {"$ref": "#/components/schemas/IngestEvent"}}
    schema = {
        "title": "IngestBatch",
        "type": "object",
        "required": ["events"],
        "properties": {"events": {**events, "maxItems": max_batch}},
    }
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def openapi_components() -> dict[str, Any]:
    """JSON Schemas of the ingest bodies, for the OpenAPI document's components."""
    schema = _INGEST.json_schema(ref_template="#/components/schemas/{model}")
    components: dict[str, Any] = schema.pop("$defs", {})
    bounds = (
        f" Not before {EARLIEST:%Y-%m-%d}, and at most {MAX_FUTURE.days} day ahead of the"
        " server's clock."
    )
    for model in INGEST_TO_TOPIC:
        body = components[model.__name__]
        body["required"] = ["type", *body.get("required", [])]  # the discriminator's tag
        body["properties"]["event_time"]["description"] += bounds
    components["IngestEvent"] = schema
    return components
