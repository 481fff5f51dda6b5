"""The ingest ledger: accepted events, contacts and consent, committed in one transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from infra.db import ConsentRecord, LedgerEvent, Supporter
from schemas.events import Event, SupporterSignup

_CONTACT_FIELDS = ("email", "phone", "first_name", "last_name", "postcode", "area")


def record_events(
    session: Session, events: Sequence[Event], accepted_at: datetime
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """Add events not seen before to the ledger; return (accepted ids, duplicate ids).

    The caller owns the transaction: the API answers 202 only after it commits.
    """
    ids = [e.event_id for e in events]
    seen = set(session.scalars(select(LedgerEvent.event_id).where(LedgerEvent.event_id.in_(ids))))
    accepted: list[uuid.UUID] = []
    duplicates: list[uuid.UUID] = []
    fresh: list[Event] = []
    for event in events:
        if event.event_id in seen:
            duplicates.append(event.event_id)
            continue
        seen.add(event.event_id)
        accepted.append(event.event_id)
        fresh.append(event)
    session.add_all(
        LedgerEvent(
            event_id=e.event_id,
            topic=e.topic,
            key=e.key(),
            payload=e.model_dump_json(),
            accepted_at=accepted_at,
            published=False,
        )
        for e in fresh
    )
    _update_contacts(session, fresh)
    _record_consent(session, fresh, accepted_at)
    return accepted, duplicates


def _update_contacts(session: Session, events: Sequence[Event]) -> None:
    """Keep the newest non-empty contact details per supporter (by event time)."""
    newest: dict[str, dict[str, object]] = {}
    for event in sorted(events, key=lambda e: e.event_time):
        fields = {f: getattr(event, f, None) for f in _CONTACT_FIELDS}
        newest.setdefault(event.key(), {}).update({k: v for k, v in fields.items() if v})
    if not newest:
        return
    existing = {
        s.supporter_id: s
        for s in session.scalars(select(Supporter).where(Supporter.supporter_id.in_(list(newest))))
    }
    for supporter_id, fields in newest.items():
        row = existing.get(supporter_id)
        if row is None:
            session.add(Supporter(supporter_id=supporter_id, **fields))
        else:
            for name, value in fields.items():
                setattr(row, name, value)


def _record_consent(session: Session, events: Sequence[Event], accepted_at: datetime) -> None:
    """A signup that ticked a box grants that channel; an unticked box withdraws nothing.

    The grant is stamped with the signup's time, but never later than its arrival: a form
    whose clock runs ahead must not outrank an unsubscribe that comes after it.
    """
    for event in events:
        if not isinstance(event, SupporterSignup):
            continue
        for channel, granted in (("email", event.consent_email), ("sms", event.consent_sms)):
            if granted:
                session.add(
                    ConsentRecord(
                        supporter_id=event.supporter_id,
                        channel=channel,
                        granted=True,
                        source=event.source or "signup",
                        wording_version=event.consent_wording,
                        recorded_at=min(event.event_time, accepted_at),
                        event_id=event.event_id,
                    )
                )


def unpublished(session: Session, limit: int) -> list[LedgerEvent]:
    return list(
        session.scalars(
            select(LedgerEvent)
            .where(LedgerEvent.published.is_(False))
            .order_by(LedgerEvent.seq)
            .limit(limit)
        )
    )


def mark_published(session: Session, seqs: Sequence[int]) -> None:
    session.execute(update(LedgerEvent).where(LedgerEvent.seq.in_(seqs)).values(published=True))


def mark_all_unpublished(session: Session) -> int:
    """After the embedded broker lost its memory: publish everything again (consumers dedupe)."""
    result = session.execute(
        update(LedgerEvent).where(LedgerEvent.published.is_(True)).values(published=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
