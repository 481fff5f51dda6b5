"""Organisers' sign-in and server-side sessions: the one writer of ``organiser_sessions``.

A session is a random token in the organiser's cookie; the table keeps only its SHA-256, the
organiser, a CSRF token every state-changing request must carry, and when it was created,
expires (``ENGAGE_ORGANISER_SESSION_HOURS`` after sign-in) and was last used. A session dies
when it expires, when its organiser is disabled or changes password, and when they sign out.
The caller owns the database session; time comes in as ``now``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session

from consumers.organising.passwords import verify_password
from infra.db import Organiser, OrganiserSession

SEEN_EVERY = timedelta(minutes=1)
"""``last_seen_at`` is written at most this often (the queue page polls every few seconds)."""


@dataclass(frozen=True)
class SignedIn:
    """A live session: whose, its CSRF token, and when it ends."""

    organiser_id: str
    csrf_token: str
    expires_at: datetime


@dataclass(frozen=True)
class NewSession:
    """A session just started: the token for the cookie (shown once, never stored)."""

    token: str
    signed_in: SignedIn


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def authenticate(session: Session, organiser_id: str, password: str) -> str | None:
    """The organiser's id if the password is theirs and they are not disabled; else None,
    after the same work (an unknown id is verified against a dummy hash)."""
    row = session.get(Organiser, organiser_id.strip()[:40]) if organiser_id.strip() else None
    good = verify_password(row.password_hash if row is not None else None, password)
    if row is None or not good or row.disabled:
        return None
    return row.organiser_id


def start_session(
    session: Session, organiser_id: str, now: datetime, lasts: timedelta
) -> NewSession:
    """A new session for a signed-in organiser; expired sessions (anyone's) are deleted."""
    session.execute(delete(OrganiserSession).where(OrganiserSession.expires_at <= now))
    token = secrets.token_urlsafe(32)
    signed_in = SignedIn(organiser_id, secrets.token_urlsafe(32), now + lasts)
    session.add(
        OrganiserSession(
            token_hash=token_hash(token),
            organiser_id=organiser_id,
            csrf_token=signed_in.csrf_token,
            created_at=now,
            expires_at=signed_in.expires_at,
            last_seen_at=now,
        )
    )
    session.flush()
    return NewSession(token, signed_in)


def current_session(session: Session, token: str | None, now: datetime) -> SignedIn | None:
    """The live session this cookie token opens, or None: no token, unknown, expired, or its
    organiser disabled (an expired or disabled one is deleted on the way)."""
    if not token or len(token) > 200:
        return None
    row = session.get(OrganiserSession, token_hash(token))
    if row is None:
        return None
    organiser = session.get(Organiser, row.organiser_id)
    if row.expires_at <= now or organiser is None or organiser.disabled:
        session.delete(row)
        session.flush()
        return None
    if now - row.last_seen_at >= SEEN_EVERY:
        row.last_seen_at = now
    return SignedIn(row.organiser_id, row.csrf_token, row.expires_at)


def end_session(session: Session, token: str | None) -> bool:
    """Sign out: delete the session this token opens; False if there was none."""
    if not token:
        return False
    deleted = session.execute(
        delete(OrganiserSession).where(OrganiserSession.token_hash == token_hash(token))
    )
    return bool(deleted.rowcount)  # type: ignore[attr-defined]


def end_sessions_of(session: Session, organiser_id: str) -> int:
    """Delete every session of an organiser (disabled, or their password changed)."""
    deleted = session.execute(
        delete(OrganiserSession).where(OrganiserSession.organiser_id == organiser_id)
    )
    return int(deleted.rowcount)  # type: ignore[attr-defined]
