"""The organisers' commands: `engage groups`, `engage organisers` (for an admin) and `engage
queue` (for an organiser); the one place the follow-up queue's operations are built with the
ledger's append function (``follow_ups``); and the assembly of the organisers' pages and JSON
routes (``organiser_routers``) with their templates and the stream's explanation. Parsing,
printing and wiring only: the logic is in ``consumers.organising``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from consumers.organising import directory
from consumers.organising.rules import COMMITMENTS, OUTCOMES, Conflict, NotFound, Refused
from consumers.organising.service import FollowUps
from infra.settings import Settings
from producers.ledger import record_events

if TYPE_CHECKING:
    from fastapi import APIRouter

    from streams.engagement import Engine

TEMPLATES = Path(__file__).parent / "templates"
"""The organisers' pages (Jinja2)."""
STATIC = Path(__file__).parent / "static"
"""Their stylesheet and script, served by the app at /static."""


def follow_ups(settings: Settings) -> FollowUps:
    """The queue's operations: claims last ``ENGAGE_CLAIM_MINUTES``, outcomes go onto the log
    through the ingest ledger (``producers.ledger.record_events``)."""
    return FollowUps(
        claim_for=timedelta(minutes=settings.claim_minutes),
        identity_key=settings.secret("identity_key"),
        append=record_events,
    )


def organiser_routers(
    settings: Settings, sessions: sessionmaker[Session], engine: Engine
) -> list[APIRouter]:
    """The organisers' pages and JSON endpoints, on one session store and one sign-in rate
    limit: sessions last ``ENGAGE_ORGANISER_SESSION_HOURS``, cookies are Secure when
    ``ENGAGE_PUBLIC_URL`` is https, and the task page explains a supporter with the stream's
    own engine (``streams.explain``)."""
    from zoneinfo import ZoneInfo

    from fastapi.templating import Jinja2Templates

    from consumers.organising.api import organisers_api_router
    from consumers.organising.pages import pages_router
    from consumers.organising.web import OrganiserWeb, is_https
    from streams.explain import UnknownSupporter, explain

    web = OrganiserWeb(
        sessions=sessions,
        follow_ups=follow_ups(settings),
        session_for=timedelta(hours=settings.organiser_session_hours),
        secure_cookies=is_https(settings.public_url),
    )

    def explained(supporter_id: str, now: datetime) -> dict[str, Any] | None:
        try:
            return explain(sessions, engine, supporter_id, now.timestamp())
        except UnknownSupporter:
            return None

    pages = pages_router(
        web,
        Jinja2Templates(directory=TEMPLATES),
        explained,
        org_name=settings.org_name,
        zone=ZoneInfo(settings.default_timezone),
    )
    return [pages, organisers_api_router(web)]


def _now() -> datetime:
    return datetime.now(UTC)


def _print(result: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    if as_json:
        if isinstance(result, BaseModel):
            print(result.model_dump_json(indent=2))
        else:
            print(json.dumps([r.model_dump(mode="json") for r in result], indent=2))
    else:
        print(text(result))


def _run(settings: Settings, work: Callable[[Session], int]) -> int:
    """``work`` in one transaction; the queue's refusals as a message and exit status 1 (2 for
    invalid input)."""
    from engage import wiring

    try:
        with wiring.sessions(settings).begin() as session:
            return work(session)
    except (NotFound, Conflict, Refused) as exc:
        print(f"{type(exc).__name__.lower()}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 2


# --- engage groups ----------------------------------------------------------------------------


def cmd_groups(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.organising.rules import districts

    def work(session: Session) -> int:
        if args.action == "list":
            groups = directory.list_groups(session)
            national = directory.national_summary(session)
            if args.json:
                body = {
                    "groups": [g.model_dump() for g in groups],
                    "national": national.model_dump(),
                }
                print(json.dumps(body, indent=2))
            else:
                print(_groups_text(groups, national))
            return 0
        if not args.group_id:
            raise ValueError(f"groups {args.action}: name the group")
        if args.action == "add":
            if not args.name:
                raise ValueError("groups add: give --name")
            view = directory.add_group(
                session,
                args.group_id,
                args.name,
                districts(args.areas or ""),
                _now(),
                move=args.move,
            )
        else:
            view = directory.change_areas(
                session,
                args.group_id,
                _now(),
                exactly=districts(args.set) if args.set is not None else None,
                add=districts(args.add or ""),
                remove=districts(args.remove or ""),
                move=args.move,
            )
        print(_group_line(view))
        return 0

    return _run(settings, work)


def _group_line(g: directory.GroupView) -> str:
    return (
        f"{g.group_id:<16} {g.name:<24} areas: {', '.join(g.districts) or '-'}  "
        f"organisers: {', '.join(g.organisers) or '-'} (leads: {', '.join(g.leads) or '-'})  "
        f"open tasks: {g.open_tasks}"
    )


def _groups_text(groups: list[directory.GroupView], national: directory.NationalQueue) -> str:
    lines = [_group_line(g) for g in groups]
    per = ", ".join(f"{d} {n}" for d, n in national.districts.items()) or "-"
    lines.append(f"national queue (districts nobody owns): {national.open_tasks} open ({per})")
    return "\n".join(lines)


# --- engage organisers ------------------------------------------------------------------------


def cmd_organisers(settings: Settings, args: argparse.Namespace) -> int:
    wants_password = args.action == "password" or (args.action == "add" and args.password_stdin)
    password: str | None = None
    if wants_password and args.organiser_id:
        try:
            password = _read_password()
        except ValueError as exc:
            print(f"invalid: {exc}", file=sys.stderr)
            return 2

    def work(session: Session) -> int:
        if args.action == "list":
            found = directory.list_organisers(session)
            _print(found, args.json, lambda rows: "\n".join(map(_organiser_line, rows)))
            return 0
        if not args.organiser_id:
            raise ValueError(f"organisers {args.action}: name the organiser")
        if args.action == "add":
            if not args.name:
                raise ValueError("organisers add: give --name")
            view = directory.add_organiser(
                session,
                args.organiser_id,
                args.name,
                args.group or [],
                _now(),
                leads=args.lead or [],
                is_admin=args.admin,
            )
            if password is not None:
                directory.set_password(session, args.organiser_id, password, _now())
                view = view.model_copy(update={"password_set": True})
        elif args.action == "password":
            assert password is not None
            directory.set_password(session, args.organiser_id, password, _now())
            print(f"password set for {args.organiser_id}; their sessions have ended")
            return 0
        else:
            view = directory.disable_organiser(session, args.organiser_id, _now())
        print(_organiser_line(view))
        return 0

    return _run(settings, work)


def _read_password() -> str:
    """A new password: typed twice at a terminal (not echoed), else the first line of stdin
    (``printf '%s\\n' "$PASSWORD" | engage organisers password asha``). Never an argument:
    arguments show in ``ps`` and shell history."""
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass("New password: ")
        if getpass.getpass("Again: ") != first:
            raise ValueError("password: the two did not match")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def _organiser_line(o: directory.OrganiserView) -> str:
    flags = [
        *(["admin"] if o.is_admin else []),
        *(["disabled"] if o.disabled else []),
        *([] if o.password_set else ["no password (cannot sign in)"]),
    ]
    return (
        f"{o.organiser_id:<16} {o.name:<24} groups: {', '.join(o.groups) or '-'}  "
        f"leads: {', '.join(o.leads) or '-'}  {' '.join(flags)}"
    ).rstrip()


# --- engage queue -----------------------------------------------------------------------------


def cmd_queue(settings: Settings, args: argparse.Namespace) -> int:
    service = follow_ups(settings)

    def work(session: Session) -> int:
        who = service.organiser(session, args.organiser)
        now = _now()
        action = args.action
        if action == "list":
            view = service.queue(session, who, now, national=args.national)
            _print(view, args.json, _queue_text)
        elif action == "escalations":
            items = service.escalations(session, who, now)
            _print(items, args.json, lambda rows: "\n".join(map(_item_line, rows)) or "none")
        elif action == "leaders":
            group = args.group or (who.group_ids[0] if who.group_ids else "")
            _print(service.leaders(session, who, group), args.json, _leaders_text)
        elif action == "training":
            at = args.at or now
            done = service.record_training(
                session, who, _needed(args.target, "the supporter"), args.training or "", at, now
            )
            _print(done, args.json, lambda r: f"recorded: {r.event_id}" if r.new else "known")
        else:
            task_id = _needed(args.target, "the task")
            if action == "show":
                detail = service.task(session, who, task_id, now)
            elif action == "claim":
                detail = service.claim(session, who, task_id, now)
            elif action == "release":
                detail = service.release(session, who, task_id, now)
            else:
                if not args.outcome:
                    raise ValueError(f"queue done: give --outcome ({', '.join(OUTCOMES)})")
                result = service.record_outcome(
                    session,
                    who,
                    task_id,
                    args.outcome,
                    now,
                    commitment=args.commitment,
                    note=args.note,
                )
                _print(result, args.json, _outcome_text)
                return 0
            _print(detail, args.json, _detail_text)
        return 0

    return _run(settings, work)


def _needed(value: str | None, what: str) -> str:
    if not value:
        raise ValueError(f"name {what}")
    return value


def _item_line(i: Any) -> str:
    flag = "OVERDUE " if i.overdue else ""
    claim = f"  claimed by {i.claimed_by} until {i.claimed_until:%H:%M}" if i.claimed_by else ""
    phone = f"  phone {i.phone}" if i.phone else ""
    return (
        f"{flag}due {i.due_at:%Y-%m-%d %H:%M} {i.priority:<6} {i.district or '-':<5} "
        f"{i.first_name or '?':<12} {i.kind}: {i.reason}  [{i.task_id}]{claim}{phone}"
    )


def _queue_text(view: Any) -> str:
    where = (
        "national queue"
        if view.national
        else ", ".join(f"{g.name} ({', '.join(g.districts) or 'no areas'})" for g in view.groups)
    )
    lines = [f"queue of {view.organiser_id}: {where or 'no group'}"]
    lines += [_item_line(i) for i in view.items]
    if view.empty_because:
        lines.append(view.empty_because)
    elif view.claimed_by_others:
        lines.append(f"({view.claimed_by_others} claimed by other organisers)")
    return "\n".join(lines)


def _detail_text(detail: Any) -> str:
    lines = [_item_line(detail.item), f"status: {detail.item.status}"]
    if detail.status_reason:
        lines.append(f"why: {detail.status_reason}")
    for h in detail.history:
        note = f"  note: {h['note']}" if h["note"] else ""
        lines.append(f"  {h['at']:%Y-%m-%d %H:%M} {h['by']:<12} {h['action']} {h['detail']}{note}")
    return "\n".join(lines)


def _outcome_text(r: Any) -> str:
    what = "reopened, due " + f"{r.due_at:%Y-%m-%d %H:%M}" if r.reopened else r.status
    extra = f"; suppressed: {', '.join(r.suppressed)}" if r.suppressed else ""
    if r.cancelled_tasks:
        extra += f"; cancelled: {', '.join(r.cancelled_tasks)}"
    return f"{r.task_id}: {r.outcome} recorded, task {what}{extra}"


def _leaders_text(r: Any) -> str:
    lines = [f"group {r.group_id}: {len(r.leaders)} leaders, {len(r.candidates)} candidates"]
    for title, people in (("leaders", r.leaders), ("candidates", r.candidates)):
        lines += [
            f"  {title[:-1]:<9} {p.first_name or '?':<12} {p.district or '-':<5} "
            f"{p.score:7.2f}  {p.supporter_id}"
            for p in people
        ]
    return "\n".join(lines)


def add_commands(sub: Any) -> None:
    """The organisers' subcommands, on the `engage` parser's subparsers."""
    groups = sub.add_parser(
        "groups",
        help="local groups and the postcode districts they own (admin)",
        description="A task goes to the group owning its supporter's postcode district; a "
        "district nobody owns goes to the national queue. Changing areas re-routes open tasks.",
    )
    groups.add_argument("action", choices=["list", "add", "areas"], nargs="?", default="list")
    groups.add_argument("group_id", nargs="?", metavar="GROUP")
    groups.add_argument("--name")
    groups.add_argument("--areas", help="with add: districts, comma-separated (E1,E2,SW9)")
    groups.add_argument("--set", help="with areas: exactly these districts")
    groups.add_argument("--add", help="with areas: add these districts")
    groups.add_argument("--remove", help="with areas: remove these districts")
    groups.add_argument("--move", action="store_true", help="take districts from other groups")
    groups.add_argument("--json", action="store_true")
    groups.set_defaults(run=cmd_groups)

    organisers = sub.add_parser(
        "organisers",
        help="organisers and their groups (admin)",
        description="`password ID` sets an organiser's sign-in password (at least 10 "
        "characters), typed twice at a terminal or read from the first line of stdin; never "
        "give it as an argument. Setting it, or disabling them, signs them out everywhere.",
    )
    organisers.add_argument(
        "action", choices=["list", "add", "disable", "password"], nargs="?", default="list"
    )
    organisers.add_argument("organiser_id", nargs="?", metavar="ORGANISER")
    organisers.add_argument("--name")
    organisers.add_argument("--group", action="append", help="a group they belong to (repeat)")
    organisers.add_argument("--lead", action="append", help="a group they lead (repeat)")
    organisers.add_argument("--admin", action="store_true", help="manages groups and organisers")
    organisers.add_argument(
        "--password-stdin",
        action="store_true",
        help="with add: set their password, read from stdin (or typed twice at a terminal)",
    )
    organisers.add_argument("--json", action="store_true")
    organisers.set_defaults(run=cmd_organisers)

    queue = sub.add_parser(
        "queue",
        help="an organiser's follow-up queue: list, claim, release, record the outcome",
        description="Work the follow-up queue as an organiser (--organiser ID). `done` records "
        "the outcome: reached_committed (with --commitment), reached_not_now, no_answer "
        "(reopens the task once, a day later), wrong_number (no more texts to that phone), "
        "do_not_contact (consent withdrawn on every channel, addresses suppressed).",
    )
    queue.add_argument(
        "action",
        choices=["list", "show", "claim", "release", "done", "escalations", "leaders", "training"],
        nargs="?",
        default="list",
    )
    queue.add_argument("target", nargs="?", metavar="TASK|SUPPORTER")
    queue.add_argument("--organiser", required=True, metavar="ID")
    queue.add_argument("--national", action="store_true", help="list: the national queue (admin)")
    queue.add_argument("--outcome", choices=OUTCOMES)
    queue.add_argument("--commitment", choices=COMMITMENTS, help="with reached_committed")
    queue.add_argument("--note", help="a short note (at most 280 characters), kept off the log")
    queue.add_argument("--group", help="leaders: which group (default: the first of yours)")
    queue.add_argument("--training", help="training: its name")
    queue.add_argument("--at", type=_aware, help="training: when (ISO, with zone; default now)")
    queue.add_argument("--json", action="store_true")
    queue.set_defaults(run=cmd_queue)


def _aware(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a time zone, e.g. {text}Z")
    return when
