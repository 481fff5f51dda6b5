"""The organisers' JSON endpoints (``/v1/organisers/...``, tag "organisers" in the OpenAPI
document): sign in and out, the queue, a task, claim, release, the outcome, escalations, a
group's leaders and a training. Authenticated by the same session cookie as the pages; every
state-changing request carries the session's CSRF token in ``X-CSRF-Token``. Each handler
parses, calls ``FollowUps`` in one transaction and answers; refusals are problem details
naming the field (``infra.http.problem``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyCookie
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from consumers.organising.accounts import end_session
from consumers.organising.outcomes import OutcomeResult, TrainingResult
from consumers.organising.passwords import MAX_LENGTH
from consumers.organising.queue import Leaders, QueueItem, QueueView, TaskDetail
from consumers.organising.rules import COMMITMENTS, NOTE_MAX, Conflict, NotFound, Refused
from consumers.organising.web import (
    CSRF_HEADER,
    NOT_RECOGNISED,
    SESSION_COOKIE,
    Caller,
    OrganiserWeb,
    Throttled,
    caller,
    clear_session_cookie,
    field_and_reason,
    set_session_cookie,
    sign_in,
    tokens_match,
)
from infra.http import ProblemDetail, problem
from schemas.events import Commitment, OutcomeKind

# Puts the cookie in the OpenAPI document; the check itself is ``caller``'s.
_COOKIE = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    description="The session cookie that POST /v1/organisers/session sets (as the pages do).",
)


class SignIn(BaseModel):
    organiser_id: str = Field(min_length=1, max_length=40)
    password: str = Field(min_length=1, max_length=MAX_LENGTH)


class SessionOut(BaseModel):
    """A new session: the cookie is set; send ``csrf_token`` as ``X-CSRF-Token`` with every
    state-changing request."""

    organiser_id: str
    name: str
    is_admin: bool
    groups: list[str]
    leads: list[str]
    csrf_token: str
    expires_at: datetime


class RecordOutcome(BaseModel):
    outcome: OutcomeKind
    commitment: Commitment | None = Field(
        default=None, description=f"With reached_committed only: one of {', '.join(COMMITMENTS)}."
    )
    note: str | None = Field(
        default=None, max_length=NOTE_MAX, description="Kept in the task's history, off the log."
    )


class RecordTraining(BaseModel):
    supporter_id: str = Field(min_length=1, max_length=40)
    training: str = Field(min_length=1, max_length=200)
    at: datetime | None = Field(
        default=None, description="When it was completed, with a zone; default: now."
    )


def _problem_response(description: str, **extra: Any) -> dict[str, Any]:
    return {"model": ProblemDetail, "description": description, **extra}


Responses = dict[int | str, dict[str, Any]]
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds until a sign-in may be tried again.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
_SET_COOKIE = {
    "Set-Cookie": {
        "description": f"The session cookie ({SESSION_COOKIE}): HttpOnly, SameSite=Lax.",
        "schema": {"type": "string"},
    }
}
_UNAUTHORISED: Responses = {
    401: _problem_response("Not signed in, or the session expired or ended.")
}
_CSRF: Responses = {
    403: _problem_response(
        f"The {CSRF_HEADER} header is missing or not this session's; or the organiser may "
        "not do this."
    )
}
_NOT_FOUND: Responses = {
    404: _problem_response("No such task, or not one of your groups' (the same).")
}
_CONFLICT: Responses = {
    409: _problem_response("The task is not open to you: claimed by someone else, done…")
}
_CSRF_PARAMETER = {
    "name": CSRF_HEADER,
    "in": "header",
    "required": True,
    "description": "The session's CSRF token (``csrf_token`` from signing in).",
    "schema": {"type": "string"},
}
_BAD_BODY: Responses = {
    400: _problem_response("Malformed JSON."),
    422: _problem_response("A field is missing or invalid (named in the answer)."),
}


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def _changing(model: type[BaseModel] | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {"parameters": [_CSRF_PARAMETER]}
    if model is not None:
        extra.update(_body(model))
    return extra


TaskId = Annotated[str, Path(description="The task's id, as the queue lists it.")]
GroupId = Annotated[str, Path(description="One of your groups' ids (any group, for an admin).")]


def organisers_api_router(web: OrganiserWeb) -> APIRouter:
    router = APIRouter(prefix="/v1/organisers", tags=["organisers"])
    signed = [Security(_COOKIE)]

    def run(
        request: Request, work: Callable[[Session, Caller, datetime], Any], *, changes: bool
    ) -> Response:
        """``work`` for the signed-in caller, in one transaction; a refusal as a problem."""
        now = web.clock()
        try:
            with web.sessions.begin() as db:
                found = caller(web, db, request, now)
                if found is None:
                    return problem(401, "session", "sign in first (the session expired or ended)")
                if changes and not tokens_match(
                    found.signed_in.csrf_token, request.headers.get(CSRF_HEADER)
                ):
                    return problem(403, CSRF_HEADER, "missing, or not this session's CSRF token")
                result = work(db, found, now)
        except NotFound as exc:
            return problem(404, "task_id" if "task" in str(exc) else _what(exc), str(exc))
        except Conflict as exc:
            return problem(409, "task_id", str(exc))
        except Refused as exc:
            return problem(403, "organiser", str(exc))
        except ValueError as exc:
            return problem(422, *field_and_reason(exc))
        if isinstance(result, Response):
            return result
        if isinstance(result, list):
            return JSONResponse([r.model_dump(mode="json") for r in result])
        return JSONResponse(result.model_dump(mode="json"))

    async def parsed(request: Request, model: type[BaseModel]) -> BaseModel | JSONResponse:
        try:
            payload = json.loads(await request.body())
        except (ValueError, RecursionError) as exc:
            return problem(400, "body", f"malformed JSON: {type(exc).__name__}")
        try:
            return model.model_validate(payload)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            return problem(422, ".".join(map(str, first["loc"])) or "body", first["msg"])

    @router.post(
        "/session",
        summary="Sign in: set the session cookie; answer the CSRF token",
        description="The same sign-in as the page's, rate-limited the same way. The body must "
        "be `application/json` (a cross-site form cannot send that).",
        response_model=SessionOut,
        responses={
            200: {"headers": _SET_COOKIE},
            **_BAD_BODY,
            401: _problem_response(NOT_RECOGNISED),
            415: _problem_response("The body is not application/json."),
            429: _problem_response(
                "Too many failed sign-ins for this organiser id or from this address.",
                headers=_RETRY_AFTER,
            ),
        },
        openapi_extra=_body(SignIn),
    )
    async def start(request: Request) -> Response:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            return problem(415, "content-type", "send the body as application/json")
        asked = await parsed(request, SignIn)
        if isinstance(asked, JSONResponse):
            return asked
        assert isinstance(asked, SignIn)
        client = request.client.host if request.client else None
        return await run_in_threadpool(signed_in, asked, client)

    def signed_in(asked: SignIn, client: str | None) -> Response:
        outcome = sign_in(web, asked.organiser_id, asked.password, client)
        if isinstance(outcome, Throttled):
            refused = problem(429, "organiser_id", "too many failed sign-ins; try again later")
            refused.headers["Retry-After"] = str(outcome.retry_after)
            return refused
        if outcome is None:
            return problem(401, "password", NOT_RECOGNISED)
        with web.sessions() as db:
            who = web.follow_ups.organiser(db, outcome.signed_in.organiser_id)
        body = SessionOut(
            organiser_id=who.organiser_id,
            name=who.name,
            is_admin=who.is_admin,
            groups=list(who.group_ids),
            leads=list(who.led_group_ids),
            csrf_token=outcome.signed_in.csrf_token,
            expires_at=outcome.signed_in.expires_at,
        )
        response = JSONResponse(body.model_dump(mode="json"))
        set_session_cookie(response, web, outcome.token)
        return response

    @router.delete(
        "/session",
        summary="Sign out: end the session",
        status_code=204,
        dependencies=signed,
        responses={204: {"headers": _SET_COOKIE}, **_UNAUTHORISED, **_CSRF},
        openapi_extra=_changing(),
    )
    def stop(request: Request) -> Response:
        def work(db: Session, found: Caller, now: datetime) -> Response:
            end_session(db, request.cookies.get(SESSION_COOKIE))
            response = Response(status_code=204)
            clear_session_cookie(response, web)
            return response

        return run(request, work, changes=True)

    @router.get(
        "/queue",
        summary="My groups' queue: overdue first, then by due time and priority",
        description="Open tasks of your groups' districts and your own claims; when empty, "
        "`empty_because` says why. `national=true`: the national queue (admins).",
        response_model=QueueView,
        dependencies=signed,
        responses={
            **_UNAUTHORISED,
            403: _problem_response("The national queue is for admins."),
            422: _problem_response("`national` is not a boolean."),
        },
        openapi_extra={
            "parameters": [
                {
                    "name": "national",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "boolean", "default": False},
                }
            ]
        },
    )
    def get_queue(request: Request) -> Response:
        raw = request.query_params.get("national", "false").lower()
        if raw not in {"true", "false", "1", "0"}:
            return problem(422, "national", "true or false")
        national = raw in {"true", "1"}
        return run(
            request,
            lambda db, found, now: web.follow_ups.queue(db, found.who, now, national=national),
            changes=False,
        )

    @router.get(
        "/tasks/{task_id}",
        summary="One task with its history",
        response_model=TaskDetail,
        dependencies=signed,
        responses={**_UNAUTHORISED, **_NOT_FOUND},
    )
    def get_task(task_id: TaskId, request: Request) -> Response:
        return run(
            request,
            lambda db, found, now: web.follow_ups.task(db, found.who, task_id, now),
            changes=False,
        )

    @router.post(
        "/tasks/{task_id}/claim",
        summary="Claim a task (again: renew the claim)",
        response_model=TaskDetail,
        dependencies=signed,
        responses={**_UNAUTHORISED, **_CSRF, **_NOT_FOUND, **_CONFLICT},
        openapi_extra=_changing(),
    )
    def claim(task_id: TaskId, request: Request) -> Response:
        return run(
            request,
            lambda db, found, now: web.follow_ups.claim(db, found.who, task_id, now),
            changes=True,
        )

    @router.post(
        "/tasks/{task_id}/release",
        summary="Give a claimed task back to the queue",
        response_model=TaskDetail,
        dependencies=signed,
        responses={**_UNAUTHORISED, **_CSRF, **_NOT_FOUND, **_CONFLICT},
        openapi_extra=_changing(),
    )
    def release(task_id: TaskId, request: Request) -> Response:
        return run(
            request,
            lambda db, found, now: web.follow_ups.release(db, found.who, task_id, now),
            changes=True,
        )

    @router.post(
        "/tasks/{task_id}/outcome",
        summary="Record how the call went",
        description="Completes the task (a first `no_answer` reopens it, due a day later) and "
        "puts `task.outcome` on the log; `do_not_contact` withdraws consent on every channel.",
        response_model=OutcomeResult,
        dependencies=signed,
        responses={**_BAD_BODY, **_UNAUTHORISED, **_CSRF, **_NOT_FOUND, **_CONFLICT},
        openapi_extra=_changing(RecordOutcome),
    )
    async def outcome(task_id: TaskId, request: Request) -> Response:
        asked = await parsed(request, RecordOutcome)

        def work(db: Session, found: Caller, now: datetime) -> Any:
            if isinstance(asked, JSONResponse):
                return asked
            assert isinstance(asked, RecordOutcome)
            return web.follow_ups.record_outcome(
                db,
                found.who,
                task_id,
                asked.outcome,
                now,
                commitment=asked.commitment,
                note=asked.note or None,
            )

        return await run_in_threadpool(run, request, work, changes=True)

    @router.get(
        "/escalations",
        summary="Overdue tasks of the groups I lead (and the national queue's, for an admin)",
        response_model=list[QueueItem],
        dependencies=signed,
        responses={**_UNAUTHORISED, 403: _problem_response("You lead no group.")},
    )
    def escalations(request: Request) -> Response:
        return run(
            request,
            lambda db, found, now: web.follow_ups.escalations(db, found.who, now),
            changes=False,
        )

    @router.get(
        "/groups/{group_id}/leaders",
        summary="A group's leader candidates and leaders",
        response_model=Leaders,
        dependencies=signed,
        responses={
            **_UNAUTHORISED,
            404: _problem_response("No such group, or not one of yours (the same)."),
        },
    )
    def leaders(group_id: GroupId, request: Request) -> Response:
        return run(
            request,
            lambda db, found, now: web.follow_ups.leaders(db, found.who, group_id),
            changes=False,
        )

    @router.post(
        "/trainings",
        summary="Record a training a supporter of my groups' areas completed",
        description="Puts `training.completed` on the log; the same training on the same day "
        "is recorded once (`new: false`).",
        response_model=TrainingResult,
        dependencies=signed,
        responses={
            **_BAD_BODY,
            **_UNAUTHORISED,
            **_CSRF,
            404: _problem_response("No such supporter in your groups' areas (or none at all)."),
        },
        openapi_extra=_changing(RecordTraining),
    )
    async def training(request: Request) -> Response:
        asked = await parsed(request, RecordTraining)

        def work(db: Session, found: Caller, now: datetime) -> Any:
            if isinstance(asked, JSONResponse):
                return asked
            assert isinstance(asked, RecordTraining)
            at = asked.at or now
            if at.tzinfo is None:
                raise ValueError("at: give a time zone")
            return web.follow_ups.record_training(
                db, found.who, asked.supporter_id, asked.training, at, now
            )

        return await run_in_threadpool(run, request, work, changes=True)

    return router


def _what(exc: LookupError) -> str:
    text = str(exc)
    for field in ("group", "supporter"):
        if text.startswith(f"no {field}"):
            return f"{field}_id"
    return "id"
