"""A UK GDPR erasure's part on the ingest side: who the person is, and the deletion of what the
ingest side wrote about them (``supporters``, ``identity_links``, ``supporter_aliases``, their
ledger rows), the ``supporter.erased`` event for the stream, and the audit row (``erasures``).

Called by ``engage/erasure.py`` in one transaction with the consumers' part; the caller owns the
session. Nothing here logs or returns an address.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from infra.db import Erasure, IdentityLink, LedgerEvent, Supporter, SupporterAlias, survivor_of
from infra.outbox import ledger_row
from schemas.events import SupporterErased
from schemas.identity import (
    contact_identity,
    erasure_subject,
    legacy_supporter_id,
    normalise_email,
    normalise_phone,
)

_SUPPORTER_ID = re.compile(r"^sup_[0-9a-f]{32}$")


@dataclass(frozen=True)
class Subject:
    """Who an erasure request names: their current supporter id (after any merge), and the
    contact key of the address the request gave (suppressed too), if it gave one."""

    supporter_id: str | None
    """None: an address nobody is linked to (an erased person's links are gone too)."""
    found: bool
    """False: nothing of theirs is held (nobody matches, or they were erased before)."""
    given_contact: tuple[str, str] | None = None
    """(channel, keyed hash) of the email or phone in the request."""


def read_request(session: Session, identity_key: str, who: str) -> Subject:
    """The person a request names: a supporter id, an email or a phone (an address is found
    through its identity link, never by a search of stored addresses). ValueError when the
    value is none of the three. An address nobody is linked to names nobody, unless a supporter
    stored before identity links existed has it (their legacy id): once a person is erased,
    their address no longer leads to their id, so only a repeat by id is recognised."""
    who = who.strip()
    if not who or "\x00" in who or len(who) > 254:
        raise ValueError("a supporter id, an email or a phone is required")
    given: tuple[str, str] | None = None
    if _SUPPORTER_ID.match(who):
        current = survivor_of(session, who)
    else:
        if "@" in who:
            email, phone = normalise_email(who), None
            given = ("email", contact_identity(identity_key, "email", email))
        else:
            email, phone = None, normalise_phone(who)
            given = ("sms", contact_identity(identity_key, "phone", phone))
        link = session.get(IdentityLink, given[1])
        if link is not None:
            current = survivor_of(session, link.supporter_id)
        else:
            legacy = survivor_of(session, legacy_supporter_id(identity_key, email, phone))
            if not _holds_anything(session, legacy):
                return Subject(None, False, given)
            current = legacy
    return Subject(current, _holds_anything(session, current), given)


def _holds_anything(session: Session, sid: str) -> bool:
    if session.get(Supporter, sid) is not None:
        return True
    for query in (
        select(IdentityLink.identity).where(IdentityLink.supporter_id == sid),
        select(SupporterAlias.absorbed_id).where(SupporterAlias.survivor_id == sid),
        select(LedgerEvent.seq).where(
            LedgerEvent.key == sid, LedgerEvent.topic != SupporterErased.topic
        ),
    ):
        if session.scalar(query.limit(1)) is not None:
            return True
    return False


def erased_before(session: Session, identity_key: str, sid: str) -> bool:
    subject = erasure_subject(identity_key, sid)
    return (
        session.scalar(select(Erasure.erasure_id).where(Erasure.subject == subject).limit(1))
        is not None
    )


def merged_ids(session: Session, sid: str) -> list[str]:
    """``sid`` and every id merged into it."""
    absorbed = session.scalars(
        select(SupporterAlias.absorbed_id).where(SupporterAlias.survivor_id == sid)
    )
    return [sid, *sorted(absorbed)]


def linked_contacts(session: Session, ids: Collection[str]) -> list[tuple[str, str]]:
    """(channel, contact key) of every email and phone linked to these ids. An identity link
    is the address's keyed hash, the same as its suppression key (``infra.consent.contact_key``)."""
    identities = session.scalars(
        select(IdentityLink.identity).where(IdentityLink.supporter_id.in_(list(ids)))
    )
    return [("email" if i.startswith("email:") else "sms", i) for i in identities]


def stored_contacts(
    session: Session, identity_key: str, ids: Collection[str]
) -> list[tuple[str, str]]:
    """(channel, contact key) of the email and phone in the supporters rows of these ids."""
    keys: list[tuple[str, str]] = []
    for row in session.scalars(select(Supporter).where(Supporter.supporter_id.in_(list(ids)))):
        if row.email:
            keys.append(("email", contact_identity(identity_key, "email", row.email)))
        if row.phone:
            keys.append(("sms", contact_identity(identity_key, "phone", row.phone)))
    return keys


def forget_supporter(session: Session, ids: Collection[str]) -> dict[str, int]:
    """Delete the ingest side's rows of these ids (the survivor and those merged into it):
    contact details, identity links, aliases, and every ledger row keyed by them (payloads
    included: task.outcome notes, consent wording, areas). Rows deleted, per table."""
    wanted = list(ids)
    counts: dict[str, int] = {}
    for table, statement in (
        ("supporters", delete(Supporter).where(Supporter.supporter_id.in_(wanted))),
        ("identity_links", delete(IdentityLink).where(IdentityLink.supporter_id.in_(wanted))),
        (
            "supporter_aliases",
            delete(SupporterAlias).where(
                or_(
                    SupporterAlias.absorbed_id.in_(wanted),
                    SupporterAlias.survivor_id.in_(wanted),
                )
            ),
        ),
        (
            "ledger",
            delete(LedgerEvent).where(
                LedgerEvent.key.in_(wanted), LedgerEvent.topic != SupporterErased.topic
            ),
        ),
    ):
        counts[table] = int(session.execute(statement).rowcount)  # type: ignore[attr-defined]
    return counts


def announce_erasure(session: Session, sid: str, now: datetime) -> uuid.UUID:
    """The supporter.erased event, in the ledger for the relay to publish: the stream drops
    the supporter's state, and every replay of the log does the same."""
    event = SupporterErased(event_time=now, supporter_id=sid)
    session.add(ledger_row(event, now))
    return event.event_id


def record_audit(
    session: Session,
    identity_key: str,
    sid: str,
    by: str,
    now: datetime,
    rows: Mapping[str, int],
    repeat: bool,
) -> uuid.UUID:
    """The audit row of an erasure: its id, when, by whom, rows per table; the person only as
    a keyed hash of the supporter id."""
    erasure_id = uuid.uuid4()
    session.add(
        Erasure(
            erasure_id=erasure_id,
            erased_at=now,
            requested_by=by[:100],
            subject=erasure_subject(identity_key, sid),
            repeat=repeat,
            rows=dict(rows),
        )
    )
    return erasure_id
