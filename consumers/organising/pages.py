"""The organisers' web pages, server-rendered and made for a phone: sign in, my queue (which
refreshes itself), a task with the person's context and the outcome in two taps, and the
leaders each group is growing. Every page needs a live session (else: to the sign-in); every
form that changes something carries the session's CSRF token; another group's task is not
found, exactly like a task that does not exist. Kept out of the OpenAPI document: the JSON
endpoints (``api.py``) are the API."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import phonenumbers
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from consumers.organising import directory
from consumers.organising.accounts import end_session
from consumers.organising.guides import guide_for
from consumers.organising.queue import QueueItem, QueueView, TaskDetail
from consumers.organising.rules import (
    ACTIVE,
    CLAIMED,
    NOTE_MAX,
    OPEN,
    OUTCOMES,
    Conflict,
    NotFound,
    Refused,
)
from consumers.organising.web import (
    CSRF_FIELD,
    NOT_RECOGNISED,
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    Caller,
    Explain,
    OrganiserWeb,
    Throttled,
    caller,
    clear_session_cookie,
    field_and_reason,
    new_sign_in_token,
    set_session_cookie,
    set_sign_in_cookie,
    sign_in,
    tokens_match,
)
from infra.consent import latest_consent

NOT_THERE = "There is nothing by that id in your groups' queue or areas."
"""A task, group or supporter that does not exist or is another group's: the same words."""
REFRESH_SECONDS = 10
"""How often an open queue page fetches its list again."""
RECENT_ACTIONS = 5
"""How many of the person's newest actions the task page shows."""
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
"""Every page: only our own CSS and script, never framed, never cached (personal data)."""

OUTCOME_LABELS = {
    "reached_committed": "Reached: committed",
    "reached_not_now": "Reached: not now",
    "no_answer": "No answer",
    "wrong_number": "Wrong number",
    "do_not_contact": "Do not contact",
}
COMMITMENT_LABELS = {
    "meeting": "Come to a meeting",
    "bring_someone": "Bring someone",
    "host": "Host a meeting",
    "lead": "Lead an action",
}
ACTION_LABELS = {
    "supporter.signup": "Signed up",
    "petition.signed": "Signed a petition",
    "event.rsvp": "Said they would come",
    "event.attended": "Came to a meeting",
    "event.hosted": "Hosted a meeting",
    "event.no_show": "Missed a meeting",
    "supporter.brought": "Brought someone",
    "email.clicked": "Clicked an email",
    "training.completed": "Completed a training",
    "outcome.positive": "A good call",
    "outcome.negative": "A difficult call",
    "commitment.meeting": "Committed to come to a meeting",
    "commitment.bring_someone": "Committed to bring someone",
    "commitment.host": "Committed to host a meeting",
    "commitment.lead": "Committed to lead an action",
}
CHANNEL_LABELS = {"email": "Email", "sms": "Texts"}


def pages_router(
    web: OrganiserWeb,
    templates: Jinja2Templates,
    explain: Explain,
    *,
    org_name: str,
    zone: ZoneInfo,
) -> APIRouter:
    """The pages. ``explain`` is `engage explain`'s explanation of a supporter (from
    ``streams``, handed in by ``engage/``); times are shown in ``zone``."""
    router = APIRouter(include_in_schema=False)
    env = templates.env
    env.globals.update(
        org_name=org_name,
        outcome_labels=OUTCOME_LABELS,
        commitment_labels=COMMITMENT_LABELS,
        note_max=NOTE_MAX,
        csrf_field=CSRF_FIELD,
    )
    env.filters.update(
        when=lambda at: _when(at, zone),
        iso=lambda at: at.isoformat() if at else "",
        kind=lambda kind: guide_for(kind).title,
        rung=_rung,
        task_path=lambda task_id: f"/tasks/{quote(task_id, safe='')}",
        points=lambda value: f"{value:.1f}",
        sentence=lambda text: text[:1].upper() + text[1:] if text else "",
        phone=_phone,
    )

    def render(
        request: Request,
        name: str,
        context: Mapping[str, Any],
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> HTMLResponse:
        return templates.TemplateResponse(
            request,
            name,
            dict(context),
            status_code=status,
            headers={**SECURITY_HEADERS, **(headers or {})},
        )

    def error(
        request: Request,
        status: int,
        title: str,
        message: str,
        found: Caller | None,
        back: str | None = None,
    ) -> HTMLResponse:
        return render(
            request,
            "error.html",
            {**_signed(found), "title": title, "message": message, "back": back},
            status,
        )

    def page(request: Request, build: Callable[[Session, Caller, datetime], Response]) -> Response:
        """A page for the signed-in organiser; without a live session, to the sign-in (and
        back here after it)."""
        now = web.clock()
        found: Caller | None = None
        try:
            with web.sessions.begin() as db:
                found = caller(web, db, request, now)
                if found is None:
                    path = request.scope.get("raw_path", b"").decode() or request.url.path
                    back = path + (f"?{request.url.query}" if request.url.query else "")
                    return _redirect(f"/sign-in?{urlencode({'next': back})}")
                return build(db, found, now)
        except NotFound:
            return error(request, 404, "Not found", NOT_THERE, found)
        except Refused as exc:
            return error(request, 403, "Not allowed", str(exc), found)

    def action(
        request: Request,
        form: FormData,
        change: Callable[[Session, Caller, datetime], Response],
        back: str,
    ) -> Response:
        """A form's change for the signed-in organiser, if it carries their CSRF token."""
        now = web.clock()
        found: Caller | None = None
        try:
            with web.sessions.begin() as db:
                found = caller(web, db, request, now)
                if found is None:
                    return _redirect("/sign-in")
                if not tokens_match(found.signed_in.csrf_token, _text(form, CSRF_FIELD)):
                    return error(
                        request,
                        403,
                        "Form expired",
                        "This form has expired or did not come from this site. Go back, "
                        "reload the page and try again.",
                        found,
                    )
                return change(db, found, now)
        except NotFound:
            return error(request, 404, "Not found", NOT_THERE, found)
        except Conflict as exc:
            return error(request, 409, "Already changed", _conflict(str(exc)), found, back=back)
        except Refused as exc:
            return error(request, 403, "Not allowed", str(exc), found)
        except ValueError as exc:
            field, reason = field_and_reason(exc)
            return error(request, 422, "Not recorded", f"{field}: {reason}", found)

    # --- signing in and out ------------------------------------------------------------------

    @router.get("/")
    def root(request: Request) -> Response:
        """Where `engage up`'s URL leads: the queue when signed in, else the sign-in."""
        with web.sessions.begin() as db:
            found = caller(web, db, request, web.clock())
        return _redirect("/queue" if found else "/sign-in")

    def sign_in_form(
        request: Request,
        status: int = 200,
        message: str | None = None,
        headers: Mapping[str, str] | None = None,
        organiser_id: str = "",
        next_page: str | None = None,
    ) -> HTMLResponse:
        token = new_sign_in_token()
        response = render(
            request,
            "sign_in.html",
            {
                "token": token,
                "message": message,
                "next": _safe_next(next_page or request.query_params.get("next")),
                "signed_out": request.query_params.get("signed_out") == "1",
                "organiser_id": organiser_id,
            },
            status,
            headers,
        )
        set_sign_in_cookie(response, web, token)
        return response

    @router.get("/sign-in")
    def sign_in_page(request: Request) -> Response:
        with web.sessions.begin() as db:
            found = caller(web, db, request, web.clock())
        if found is not None:
            return _redirect(_safe_next(request.query_params.get("next")) or "/queue")
        return sign_in_form(request)

    @router.post("/sign-in")
    async def sign_in_post(request: Request) -> Response:
        form = await request.form()
        organiser_id = _text(form, "organiser_id")[:40]

        def again(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
            return sign_in_form(
                request, status, message, headers, organiser_id, _text(form, "next")
            )

        if not tokens_match(request.cookies.get(SIGN_IN_COOKIE), _text(form, CSRF_FIELD)):
            return again(403, "The form expired. Please sign in again.")
        client = request.client.host if request.client else None
        outcome = await run_in_threadpool(
            sign_in, web, organiser_id, _text(form, "password"), client
        )
        if isinstance(outcome, Throttled):
            minutes = max(1, round(outcome.retry_after / 60))
            plural = "s" if minutes != 1 else ""
            return again(
                429,
                f"Too many failed sign-ins. Try again in {minutes} minute{plural}.",
                {"Retry-After": str(outcome.retry_after)},
            )
        if outcome is None:
            return again(401, NOT_RECOGNISED)
        response = _redirect(_safe_next(_text(form, "next")) or "/queue")
        set_session_cookie(response, web, outcome.token)
        response.delete_cookie(SIGN_IN_COOKIE, path="/sign-in")
        return response

    @router.post("/sign-out")
    async def sign_out(request: Request) -> Response:
        form = await request.form()

        def change(db: Session, found: Caller, now: datetime) -> Response:
            end_session(db, request.cookies.get(SESSION_COOKIE))
            response = _redirect("/sign-in?signed_out=1")
            clear_session_cookie(response, web)
            return response

        return await run_in_threadpool(action, request, form, change, "/queue")

    # --- the queue ---------------------------------------------------------------------------

    def queue_context(db: Session, found: Caller, now: datetime, national: bool) -> dict[str, Any]:
        view = web.follow_ups.queue(db, found.who, now, national=national)
        items = render_items(view, found)
        return {"view": view, "items_html": items, "version": _version(items)}

    def render_items(view: QueueView, found: Caller) -> str:
        template = env.get_template("_queue_items.html")
        return template.render(view=view, me=found.who)

    @router.get("/queue")
    def queue_page(request: Request) -> Response:
        national = request.query_params.get("national") in {"1", "true"}

        def build(db: Session, found: Caller, now: datetime) -> Response:
            context = queue_context(db, found, now, national)
            leads = bool(found.who.led_group_ids) or found.who.is_admin
            escalated = web.follow_ups.escalations(db, found.who, now) if leads else None
            recorded = request.query_params.get("recorded")
            return render(
                request,
                "queue.html",
                {
                    **_signed(found),
                    **context,
                    "nav": "national" if national else "queue",
                    "national": national,
                    "escalations": escalated,
                    "recorded": OUTCOME_LABELS.get(recorded or ""),
                    "refresh_seconds": REFRESH_SECONDS,
                    "items_src": "/queue/items" + ("?national=1" if national else ""),
                },
            )

        return page(request, build)

    @router.get("/queue/items")
    def queue_items(request: Request) -> Response:
        """The queue's list alone, which the page fetches every few seconds (401 when the
        session has ended: the page then goes to the sign-in)."""
        national = request.query_params.get("national") in {"1", "true"}
        now = web.clock()
        try:
            with web.sessions.begin() as db:
                found = caller(web, db, request, now)
                if found is None:
                    return Response("signed out", 401, headers=SECURITY_HEADERS)
                context = queue_context(db, found, now, national)
        except Refused:
            return Response("not allowed", 403, headers=SECURITY_HEADERS)
        return HTMLResponse(
            context["items_html"],
            headers={**SECURITY_HEADERS, "X-Queue-Version": context["version"]},
        )

    # --- a task ------------------------------------------------------------------------------

    @router.get("/tasks/{task_id}")
    def task_page(task_id: str, request: Request) -> Response:
        def build(db: Session, found: Caller, now: datetime) -> Response:
            detail = web.follow_ups.task(db, found.who, task_id, now)
            return render(request, "task.html", task_context(db, found, detail, now))

        return page(request, build)

    def task_context(
        db: Session, found: Caller, detail: TaskDetail, now: datetime
    ) -> dict[str, Any]:
        item = detail.item
        mine = item.status == CLAIMED and item.claimed_by == found.who.organiser_id
        workable = item.status == OPEN or mine
        consent = {
            CHANNEL_LABELS[channel]: latest_consent(db, item.supporter_id, channel)
            for channel in ("email", "sms")
        }
        return {
            **_signed(found),
            "nav": "queue",
            "detail": detail,
            "item": item,
            "mine": mine,
            "workable": workable and item.status in ACTIVE,
            "releasable": item.status == CLAIMED
            and (mine or _leads(found, item) or found.who.is_admin),
            "guide": guide_for(item.kind),
            "about": _about(explain(item.supporter_id, now)),
            "consent": consent,
            "history": [_history_line(h) for h in detail.history],
        }

    @router.post("/tasks/{task_id}/claim")
    async def claim(task_id: str, request: Request) -> Response:
        form = await request.form()

        def change(db: Session, found: Caller, now: datetime) -> Response:
            web.follow_ups.claim(db, found.who, task_id, now)
            return _redirect(_task_path(task_id))

        return await run_in_threadpool(action, request, form, change, _task_path(task_id))

    @router.post("/tasks/{task_id}/release")
    async def release(task_id: str, request: Request) -> Response:
        form = await request.form()

        def change(db: Session, found: Caller, now: datetime) -> Response:
            web.follow_ups.release(db, found.who, task_id, now)
            return _redirect(_task_path(task_id))

        return await run_in_threadpool(action, request, form, change, _task_path(task_id))

    @router.post("/tasks/{task_id}/outcome")
    async def outcome(task_id: str, request: Request) -> Response:
        form = await request.form()
        chosen, _, commitment = _text(form, "outcome").partition(":")
        note = _text(form, "note").strip() or None

        def change(db: Session, found: Caller, now: datetime) -> Response:
            if chosen not in OUTCOMES:
                raise ValueError("outcome: choose one of the buttons")
            web.follow_ups.record_outcome(
                db,
                found.who,
                task_id,
                chosen,
                now,
                commitment=commitment or None,  # type: ignore[arg-type]  # checked by the rules
                note=note,
            )
            return _redirect(f"/queue?{urlencode({'recorded': chosen})}")

        return await run_in_threadpool(action, request, form, change, _task_path(task_id))

    # --- leaders -----------------------------------------------------------------------------

    @router.get("/leaders")
    def leaders_page(request: Request) -> Response:
        def build(db: Session, found: Caller, now: datetime) -> Response:
            names = {g.group_id: g.name for g in directory.list_groups(db)}
            group_ids = list(names) if found.who.is_admin else list(found.who.group_ids)
            groups = [
                (names.get(g, g), web.follow_ups.leaders(db, found.who, g)) for g in group_ids
            ]
            people = {
                p.supporter_id: p
                for _, found_leaders in groups
                for p in [*found_leaders.leaders, *found_leaders.candidates]
            }
            return render(
                request,
                "leaders.html",
                {
                    **_signed(found),
                    "nav": "leaders",
                    "groups": groups,
                    "people": sorted(
                        people.values(), key=lambda p: (p.first_name or "", p.supporter_id)
                    ),
                    "today": now.astimezone(zone).date().isoformat(),
                    "recorded": request.query_params.get("recorded") == "1",
                },
            )

        return page(request, build)

    @router.post("/leaders/training")
    async def training(request: Request) -> Response:
        form = await request.form()

        def change(db: Session, found: Caller, now: datetime) -> Response:
            at = _training_time(_text(form, "date"), now, zone)
            web.follow_ups.record_training(
                db, found.who, _text(form, "supporter_id"), _text(form, "training"), at, now
            )
            return _redirect("/leaders?recorded=1")

        return await run_in_threadpool(action, request, form, change, "/leaders")

    return router


# --- helpers ----------------------------------------------------------------------------------


def _redirect(to: str) -> RedirectResponse:
    return RedirectResponse(to, status_code=303, headers=SECURITY_HEADERS)


def _signed(found: Caller | None) -> dict[str, Any]:
    if found is None:
        return {"me": None, "csrf": ""}
    return {"me": found.who, "csrf": found.signed_in.csrf_token}


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _safe_next(target: str | None) -> str | None:
    """A page of this site to go back to after signing in; None for anything else (another
    site, a scheme, a protocol-relative URL)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    return target


def _task_path(task_id: str) -> str:
    return f"/tasks/{quote(task_id, safe='')}"


def _version(html: str) -> str:
    return hashlib.sha256(html.encode()).hexdigest()[:16]


def _when(at: datetime | None, zone: ZoneInfo) -> str:
    if at is None:
        return "-"
    local = at.astimezone(zone)
    return f"{local:%a} {local.day} {local:%b}, {local:%H:%M}"


def _phone(e164: str) -> str:
    """A phone number as people dial it: UK numbers in the national form (07911 123456)."""
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return e164
    style = phonenumbers.PhoneNumberFormat
    home = number.country_code == 44  # the UK, and the islands that share its numbering
    return phonenumbers.format_number(number, style.NATIONAL if home else style.INTERNATIONAL)


def _rung(rung: str | None) -> str:
    return (rung or "not scored yet").replace("_", " ")


def _leads(found: Caller, item: QueueItem) -> bool:
    return item.group_id is not None and item.group_id in found.who.led_group_ids


def _conflict(reason: str) -> str:
    return f"That did not work: {reason}. Look at the task again."


def _about(explanation: dict[str, Any] | None) -> dict[str, Any] | None:
    """The short version of `engage explain`: why they are on their rung, and their newest
    actions with the points each adds now."""
    if explanation is None:
        return None
    recent = sorted(explanation.get("contributions", []), key=lambda c: c["at"], reverse=True)
    return {
        "rung": explanation.get("rung"),
        "score": explanation.get("score"),
        "why": list(explanation.get("rung_why", [])),
        "recent": [
            {
                "what": ACTION_LABELS.get(c["kind"], c["kind"]),
                "at": datetime.fromisoformat(c["at"]),
                "points": c["points"],
            }
            for c in recent[:RECENT_ACTIONS]
        ],
    }


def _history_line(entry: dict[str, Any]) -> dict[str, Any]:
    detail = entry.get("detail") or {}
    what = str(entry["action"]).replace("_", " ")
    if entry["action"] == "outcome":
        what = OUTCOME_LABELS.get(detail.get("outcome", ""), "outcome")
        if detail.get("commitment"):
            what += f" ({COMMITMENT_LABELS.get(detail['commitment'], detail['commitment'])})"
    return {"at": entry["at"], "by": entry["by"], "what": what, "note": entry.get("note")}


def _training_time(raw: str, now: datetime, zone: ZoneInfo) -> datetime:
    """A training's day as the form gives it (YYYY-MM-DD, default today) as a time: noon
    there, or now if that is still to come today; ValueError naming the field."""
    if not raw:
        return now
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise ValueError("date: a day as YYYY-MM-DD") from None
    if day > now.astimezone(zone).date():
        raise ValueError("date: in the future")
    return min(datetime.combine(day, time(12), zone), now)
