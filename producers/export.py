"""A subject access request's reads of what the ingest side holds: who the person is, their
contact details, merged ids, identity links, consent, suppressions and ledger events.

Plain dicts out; ``engage/export.py`` composes them with the consumers' records into the
documented ``SubjectAccessExport``. Reads only: the caller owns the session.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from infra.consent import contact_key
from infra.db import (
    ConsentRecord,
    IdentityLink,
    LedgerEvent,
    Supporter,
    SupporterAlias,
    Suppression,
    survivor_of,
)
from schemas.identity import contact_identity, normalise_email, normalise_phone

_CONTACT_FIELDS = ("email", "phone", "first_name", "last_name", "postcode", "area", "timezone")


def find_supporter(session: Session, identity_key: str, who: str) -> str | None:
    """The supporter id ``who`` stands for now (after any merge), or None if nobody matches.

    ``who`` is a supporter id (one merged into another gives the survivor), an email or a
    phone; an address is found through its identity link (its keyed hash), never by a search
    of the stored addresses.
    """
    who = who.strip()
    if not who or "\x00" in who:
        return None
    readings: tuple[tuple[Literal["email", "phone"], Callable[[str], str]], ...] = (
        ("email", normalise_email),
        ("phone", normalise_phone),
    )
    for kind, normalise in readings:
        if kind == "email" and "@" not in who:
            continue
        if kind == "phone" and who.startswith("sup_"):
            continue
        try:
            address = normalise(who)
        except ValueError:
            continue
        link = session.get(IdentityLink, contact_identity(identity_key, kind, address))
        if link is not None:
            return survivor_of(session, link.supporter_id)
    current = survivor_of(session, who)
    if session.get(Supporter, current) is not None:
        return current
    keyed = select(LedgerEvent.seq).where(LedgerEvent.key == current).limit(1)
    return current if session.scalar(keyed) is not None else None


def merged_into(session: Session, supporter_id: str) -> list[dict[str, Any]]:
    """The ids merged into this supporter, oldest merge first."""
    rows = session.scalars(
        select(SupporterAlias)
        .where(SupporterAlias.survivor_id == supporter_id)
        .order_by(SupporterAlias.merged_at, SupporterAlias.absorbed_id)
    )
    return [
        {"supporter_id": r.absorbed_id, "merged_at": r.merged_at, "event_id": r.event_id}
        for r in rows
    ]


def contact_details(session: Session, supporter_id: str) -> dict[str, Any] | None:
    row = session.get(Supporter, supporter_id)
    if row is None:
        return None
    return {
        **{name: getattr(row, name) for name in _CONTACT_FIELDS},
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def identity_links(session: Session, supporter_ids: Sequence[str]) -> list[dict[str, Any]]:
    """That an email or a phone is linked to them, and since when: the link itself is a keyed
    hash, which says nothing to the person, so it is left out."""
    rows = session.scalars(
        select(IdentityLink)
        .where(IdentityLink.supporter_id.in_(supporter_ids))
        .order_by(IdentityLink.created_at, IdentityLink.identity)
    )
    return [{"kind": row.identity.partition(":")[0], "linked_at": row.created_at} for row in rows]


def consents(session: Session, supporter_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Every consent record (granted or withdrawn), oldest first: the newest per channel decides."""
    rows = session.scalars(
        select(ConsentRecord)
        .where(ConsentRecord.supporter_id.in_(supporter_ids))
        .order_by(ConsentRecord.recorded_at, ConsentRecord.id)
    )
    return [
        {
            "channel": r.channel,
            "granted": r.granted,
            "source": r.source,
            "wording_version": r.wording_version,
            "recorded_at": r.recorded_at,
            "event_id": r.event_id,
        }
        for r in rows
    ]


def address_keys(
    identity_key: str, email: str | None, phone: str | None
) -> list[tuple[Literal["email", "sms"], str]]:
    """The suppression list's keys ((channel, keyed hash)) of an email and a phone."""
    keys: list[tuple[Literal["email", "sms"], str]] = []
    if email:
        keys.append(("email", contact_key(identity_key, "email", email)))
    if phone:
        keys.append(("sms", contact_key(identity_key, "sms", phone)))
    return keys


def suppressions(session: Session, keys: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """The suppressions (active or lifted) of these (channel, keyed hash) pairs."""
    wanted = sorted(set(keys))
    if not wanted:
        return []
    rows = session.scalars(
        select(Suppression)
        .where(tuple_(Suppression.channel, Suppression.contact).in_(wanted))
        .order_by(Suppression.created_at, Suppression.channel)
    )
    return [
        {
            "channel": r.channel,
            "reason": r.reason,
            "source": r.source,
            "created_at": r.created_at,
            "lifted_at": r.lifted_at,
            "lifted_by": r.lifted_by,
        }
        for r in rows
    ]


def ledger_events(session: Session, supporter_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The ledger's events keyed by any of these ids, in the order they were accepted."""
    rows = session.scalars(
        select(LedgerEvent).where(LedgerEvent.key.in_(supporter_ids)).order_by(LedgerEvent.seq)
    )
    events = []
    for row in rows:
        payload = json.loads(row.payload)
        events.append(
            {
                "event_id": row.event_id,
                "topic": row.topic,
                "supporter_id": row.key,
                "event_time": payload.get("event_time"),
                "accepted_at": row.accepted_at,
                "payload": payload,
            }
        )
    return events
