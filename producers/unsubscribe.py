"""The unsubscribe link of every email: a page to confirm, and one-click (RFC 8058) opt-out.

An opt-out is recorded as a withdrawn consent for the channel the nudge used; the
dispatcher reads the newest record at the moment of sending, so nothing more goes out. The
same transaction puts a consent.changed event in the ledger, so the stream sees it too.
"""

from __future__ import annotations

import hmac
import html
from datetime import UTC, datetime
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Path, Query
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from infra.consent import suppress, suppress_contact
from infra.db import Nudge, Supporter, survivor_of
from producers.ledger import record_events
from schemas.events import ConsentChanged
from schemas.identity import opt_out_token

log = structlog.get_logger(__name__)
_SOURCE = "unsubscribe_link"

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}}
button{{font-size:1rem;padding:.6rem 1.2rem}}</style></head><body>{body}</body></html>"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=html.escape(title), body=body), status_code=status)


def _not_recognised(what: str) -> dict[int | str, dict[str, Any]]:
    page = {"text/html": {"schema": {"type": "string"}}}
    return {
        404: {"description": f"Link not recognised ({what}): a page saying so.", "content": page}
    }


# Documentation only: a nudge id or token the links never carry answers 404, not 422.
NudgeId = Annotated[
    str,
    Path(
        description="The nudge's id, as in the link (never contains '/').",
        json_schema_extra={
            "pattern": "^[^/]+$",
            "examples": ["welcome:sup_0123456789abcdef0123456789abcdef"],
        },
    ),
]
Token = Annotated[
    str,
    Query(
        description="The link's token: without it, or with a wrong one, the answer is 404.",
        json_schema_extra={"pattern": "^[0-9a-f]{32}$"},
    ),
]
Code = Annotated[
    str,
    Path(
        description="The nudge's opt-out code, as in the text: 10 base32 characters.",
        json_schema_extra={"pattern": "^[a-z2-7]{10}$", "examples": ["k3v7q2m5xa"]},
    ),
]


def withdraw(session: Session, nudge_id: str, source: str, key: str | None = None) -> Nudge | None:
    """Record that the recipient of this nudge withdrew consent for its channel: a consent
    record and a consent.changed event, for the supporter they are now (after any merge).
    With the identity ``key``, the address the nudge went to joins the suppression list too,
    so no later import or form under any id messages it again."""
    nudge = session.get(Nudge, nudge_id)
    if nudge is None:
        return None
    now = datetime.now(UTC)
    reason = "opted out by link"
    if key is not None and nudge.recipient:  # the address this message went to
        suppress_contact(session, nudge.channel, nudge.recipient, reason, source, now)
    elif key is not None:  # never sent (or sent before recipients were kept): theirs now
        person = session.get(Supporter, nudge.supporter_id)
        address = (person.email if nudge.channel == "email" else person.phone) if person else None
        if address:
            suppress(session, key, nudge.channel, address, reason, source, now)
    withdrawn = ConsentChanged.model_validate(
        {
            "event_time": now,
            "supporter_id": survivor_of(session, nudge.supporter_id),
            "channel": nudge.channel,
            "granted": False,
            "source": source,
        }
    )
    record_events(session, [withdrawn], now)
    return nudge


def unsubscribe_router(sessions: sessionmaker[Session], org_name: str, key: str) -> APIRouter:
    """Links carry ``?t=`` (schemas.identity.opt_out_token); a wrong or missing token looks
    exactly like an unknown nudge, so the page reveals nothing about who is on the list."""
    router = APIRouter(prefix="/unsubscribe", tags=["opt-out"])
    unknown = "<h1>Link not recognised</h1><p>This unsubscribe link is not one of ours.</p>"
    not_recognised = _not_recognised("an unknown nudge, or a wrong or missing token")

    def genuine(nudge_id: str, token: str) -> bool:
        return hmac.compare_digest(token.encode(), opt_out_token(key, nudge_id).encode())

    @router.get(
        "/{nudge_id}",
        response_class=HTMLResponse,
        responses=not_recognised,
        summary="Confirm an opt-out",
    )
    def confirm(nudge_id: NudgeId, t: Token = "") -> HTMLResponse:
        if not genuine(nudge_id, t):
            return _page("Unsubscribe", unknown, 404)
        with sessions() as session:
            if session.get(Nudge, nudge_id) is None:
                return _page("Unsubscribe", unknown, 404)
        who = html.escape(org_name)
        return _page(
            "Unsubscribe",
            f"<h1>Unsubscribe</h1><p>Stop all campaign messages from {who} on this channel?</p>"
            '<form method="post"><button type="submit">Unsubscribe</button></form>',
        )

    @router.post(
        "/{nudge_id}",
        response_class=HTMLResponse,
        responses=not_recognised,
        summary="Opt out (one click)",
    )
    def unsubscribe(nudge_id: NudgeId, t: Token = "") -> HTMLResponse:
        if not genuine(nudge_id, t):
            return _page("Unsubscribe", unknown, 404)
        with sessions.begin() as session:
            nudge = withdraw(session, nudge_id, source=_SOURCE, key=key)
            if nudge is None:
                return _page("Unsubscribe", unknown, 404)
            channel = nudge.channel
        log.info("consent.withdrawn", channel=channel, source=_SOURCE)
        return _page(
            "Unsubscribed",
            f"<h1>You're unsubscribed</h1><p>{html.escape(org_name)} will send you no more "
            f"campaign {'emails' if channel == 'email' else 'texts'}.</p>",
        )

    return router


def short_opt_out_router(sessions: sessionmaker[Session], org_name: str, key: str) -> APIRouter:
    """``/o/{code}``: the short opt-out link that ends texts from a one-way (alphanumeric)
    sender, which nobody can answer with STOP. The code is the nudge's ``opt_out_code``, an
    HMAC of its id (50 bits), so it needs no token; an unknown code reveals nothing."""
    router = APIRouter(prefix="/o", tags=["opt-out"])
    unknown = "<h1>Link not recognised</h1><p>This opt-out link is not one of ours.</p>"
    not_recognised = _not_recognised("no nudge has this code")

    def nudge_of(session: Session, code: str) -> Nudge | None:
        if not code.isalnum() or len(code) > 16:
            return None
        return session.scalars(select(Nudge).where(Nudge.opt_out_code == code)).first()

    @router.get(
        "/{code}",
        response_class=HTMLResponse,
        responses=not_recognised,
        summary="Confirm an SMS opt-out",
    )
    def confirm(code: Code) -> HTMLResponse:
        with sessions() as session:
            if nudge_of(session, code) is None:
                return _page("Stop texts", unknown, 404)
        return _page(
            "Stop texts",
            f"<h1>Stop texts</h1><p>Stop all campaign texts from {html.escape(org_name)}?</p>"
            '<form method="post"><button type="submit">Stop texts</button></form>',
        )

    @router.post(
        "/{code}",
        response_class=HTMLResponse,
        responses=not_recognised,
        summary="Opt out of texts",
    )
    def opt_out(code: Code) -> HTMLResponse:
        with sessions.begin() as session:
            nudge = nudge_of(session, code)
            if nudge is None:
                return _page("Stop texts", unknown, 404)
            withdraw(session, nudge.nudge_id, source="sms_opt_out_link", key=key)
        log.info("consent.withdrawn", channel="sms", source="sms_opt_out_link")
        return _page(
            "Texts stopped",
            f"<h1>Texts stopped</h1><p>{html.escape(org_name)} will send you no more "
            "campaign texts.</p>",
        )

    return router
