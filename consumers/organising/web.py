"""What the organisers' pages and JSON endpoints share: who is signed in (the session cookie),
signing in (the rate limit, the password check, a new session), the cookie's attributes, and
the CSRF check. The routes are in ``pages.py`` (HTML) and ``api.py`` (JSON)."""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from fastapi import Request, Response
from sqlalchemy.orm import Session, sessionmaker

from consumers.organising.accounts import (
    NewSession,
    SignedIn,
    authenticate,
    current_session,
    start_session,
)
from consumers.organising.rules import Acting, NotFound, Refused
from consumers.organising.service import FollowUps
from consumers.organising.throttle import SignInThrottle, keys_for

log = structlog.get_logger(__name__)

SESSION_COOKIE = "engage_session"
"""The session token: HttpOnly, SameSite=Lax, Secure when the public URL is https."""
SIGN_IN_COOKIE = "engage_sign_in"
"""The sign-in form's CSRF token before there is a session (double-submit: cookie and form)."""
CSRF_FIELD = "csrf_token"
"""The hidden field of every state-changing form."""
CSRF_HEADER = "X-CSRF-Token"
"""The header every state-changing JSON request carries."""
NOT_RECOGNISED = "Organiser id or password not recognised."
"""What a failed sign-in says, whichever of the two was wrong (or the organiser is disabled)."""

Explain = Callable[[str, datetime], dict[str, Any] | None]
"""``engage explain``'s explanation of a supporter as of a time (None: no events), handed in
by ``engage/`` from ``streams.explain``."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class OrganiserWeb:
    """Everything the organisers' routes need, built once by ``engage/``."""

    sessions: sessionmaker[Session]
    follow_ups: FollowUps
    session_for: timedelta
    secure_cookies: bool
    """Secure cookies: the public URL is https."""
    throttle: SignInThrottle = field(default_factory=SignInThrottle)
    clock: Callable[[], datetime] = _utc_now


@dataclass(frozen=True)
class Caller:
    """A signed-in organiser on this request."""

    signed_in: SignedIn
    who: Acting


def caller(web: OrganiserWeb, db: Session, request: Request, now: datetime) -> Caller | None:
    """The organiser this request's session cookie belongs to; None when there is no live
    session (none, expired, signed out, the organiser disabled)."""
    signed_in = current_session(db, request.cookies.get(SESSION_COOKIE), now)
    if signed_in is None:
        return None
    try:
        return Caller(signed_in, web.follow_ups.organiser(db, signed_in.organiser_id))
    except (NotFound, Refused):
        return None


@dataclass(frozen=True)
class Throttled:
    retry_after: int
    """Seconds."""


def sign_in(
    web: OrganiserWeb, organiser_id: str, password: str, client: str | None
) -> NewSession | Throttled | None:
    """A new session when the password is the organiser's; ``Throttled`` when this id or
    this client has failed too often lately (nothing is checked then); None otherwise,
    whether the id is unknown, the password wrong or the organiser disabled. Neither the
    password nor a failed attempt's id is logged (people type passwords into the id field)."""
    now = web.clock()
    keys = keys_for(organiser_id, client)
    wait = web.throttle.retry_after(keys, now)
    if wait is not None:
        log.info("organiser.sign_in", result="throttled", retry_after=wait)
        return Throttled(wait)
    with web.sessions.begin() as db:
        found = authenticate(db, organiser_id, password)
        new = start_session(db, found, now, web.session_for) if found else None
    if new is None:
        web.throttle.failed(keys, now)
        log.info("organiser.sign_in", result="not_recognised")
        return None
    web.throttle.succeeded(keys[0])
    log.info("organiser.sign_in", result="signed_in", organiser_id=new.signed_in.organiser_id)
    return new


def set_session_cookie(response: Response, web: OrganiserWeb, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(web.session_for.total_seconds()),
        path="/",
        httponly=True,
        samesite="lax",
        secure=web.secure_cookies,
    )


def clear_session_cookie(response: Response, web: OrganiserWeb) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=web.secure_cookies
    )


def new_sign_in_token() -> str:
    return secrets.token_urlsafe(32)


def set_sign_in_cookie(response: Response, web: OrganiserWeb, token: str) -> None:
    """The sign-in form's double-submit token; it lives an hour, for the form's page."""
    response.set_cookie(
        SIGN_IN_COOKIE,
        token,
        max_age=3600,
        path="/sign-in",
        httponly=True,
        samesite="lax",
        secure=web.secure_cookies,
    )


def tokens_match(expected: str | None, given: str | None) -> bool:
    """Two CSRF tokens, both present and equal (in constant time)."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


_FIELD = re.compile(r"^([a-z_]+): (.+)$", re.DOTALL)


def field_and_reason(error: ValueError, default: str = "body") -> tuple[str, str]:
    """The field a ValueError of the queue's operations names (``"note: at most 280
    characters"``), and the reason."""
    found = _FIELD.match(str(error))
    return (found.group(1), found.group(2)) if found else (default, str(error))


def is_https(public_url: str) -> bool:
    return public_url.lower().startswith("https://")
