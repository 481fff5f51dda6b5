"""The consent and suppression store: the one module that writes the ``consent`` and
``suppressions`` tables and reads the newest consent, called by the ingest ledger, the
webhooks and the sender alike (which may not import each other, so it lives with the tables).

A suppression is keyed by the channel and the keyed hash of the address, never the address.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import Literal

from sqlalchemy import ColumnElement, and_, delete, exists, or_, select, tuple_, update
from sqlalchemy.orm import Session, aliased

from infra.db import ConsentRecord, Suppression, dialect_insert
from schemas.events import ConsentChanged
from schemas.identity import contact_identity

Channel = Literal["email", "sms"]


def contact_key(key: str, channel: str, address: str) -> str:
    """The suppression list's key of a normalised email or E.164 phone."""
    return contact_identity(key, "email" if channel == "email" else "phone", address)


def consent_record(event: ConsentChanged, accepted_at: datetime) -> ConsentRecord:
    """The row a consent.changed event writes: stamped with its time, but never later than its
    arrival, so a clock running ahead cannot outrank a withdrawal that comes after it."""
    return ConsentRecord(
        supporter_id=event.supporter_id,
        channel=event.channel,
        granted=event.granted,
        source=event.source,
        wording_version=event.wording_version,
        recorded_at=min(event.event_time, accepted_at),
        event_id=event.event_id,
    )


def suppress(
    session: Session,
    key: str,
    channel: str,
    address: str,
    reason: str,
    source: str,
    now: datetime,
) -> None:
    """Put the address on the channel's suppression list (again, if it was lifted)."""
    suppress_contact(session, channel, contact_key(key, channel, address), reason, source, now)


def suppress_contact(
    session: Session, channel: str, contact: str, reason: str, source: str, now: datetime
) -> None:
    """``suppress`` by the address's keyed hash (``contact_key``), as a nudge records it."""
    statement = dialect_insert(session, Suppression).values(
        channel=channel,
        contact=contact,
        reason=reason[:200],
        source=source[:100],
        created_at=now,
        lifted_at=None,
        lifted_by=None,
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[Suppression.channel, Suppression.contact],
            set_={
                "reason": reason[:200],
                "source": source[:100],
                "lifted_at": None,
                "lifted_by": None,
            },
            where=Suppression.lifted_at.is_not(None),
        )
    )


def lift_suppression(
    session: Session, key: str, channel: str, address: str, by: str, now: datetime
) -> bool:
    """Lift the address's suppression, keeping the row; True when one was active. Only the
    person themselves lifts it (texting START): a re-import or a form grant does not."""
    row = session.get(Suppression, (channel, contact_key(key, channel, address)))
    if row is None or row.lifted_at is not None:
        return False
    row.lifted_at, row.lifted_by = now, by[:100]
    return True


def suppressed(
    session: Session, key: str, wanted: Iterable[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Which (channel, address) pairs are on an active suppression list."""
    by_key = {
        (channel, contact_key(key, channel, address)): (channel, address)
        for channel, address in wanted
    }
    if not by_key:
        return set()
    rows = session.execute(
        select(Suppression.channel, Suppression.contact).where(
            tuple_(Suppression.channel, Suppression.contact).in_(list(by_key)),
            Suppression.lifted_at.is_(None),
        )
    )
    return {by_key[(channel, contact)] for channel, contact in rows}


def newest_consents(
    session: Session, supporter_ids: Iterable[str]
) -> dict[tuple[str, str], ConsentRecord]:
    """The newest consent record per (supporter, channel), the one that decides: by
    ``recorded_at``, and on a tie the one recorded last. Every reader of consent asks here."""
    ids = set(supporter_ids)
    if not ids:
        return {}
    latest: dict[tuple[str, str], ConsentRecord] = {}
    for row in session.scalars(
        select(ConsentRecord)
        .where(ConsentRecord.supporter_id.in_(ids))
        .order_by(ConsentRecord.recorded_at, ConsentRecord.id)
    ):
        latest[(row.supporter_id, row.channel)] = row
    return latest


def latest_consent(session: Session, supporter_id: str, channel: str) -> ConsentRecord | None:
    return newest_consents(session, [supporter_id]).get((supporter_id, channel))


def forget_consents(session: Session, supporter_ids: Collection[str]) -> int:
    """Delete the consent records of erased supporter ids; how many. Their addresses stay
    suppressed (``suppress_contact``), which is what keeps them from being messaged again."""
    if not supporter_ids:
        return 0
    result = session.execute(
        delete(ConsentRecord).where(ConsentRecord.supporter_id.in_(list(supporter_ids)))
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def is_newest_consent() -> ColumnElement[bool]:
    """SQL: the ``ConsentRecord`` row is the newest of its supporter and channel, the one that
    decides (as ``newest_consents`` orders them: by ``recorded_at``, then the one recorded last)."""
    newer = aliased(ConsentRecord)
    return ~exists().where(
        newer.supporter_id == ConsentRecord.supporter_id,
        newer.channel == ConsentRecord.channel,
        or_(
            newer.recorded_at > ConsentRecord.recorded_at,
            and_(newer.recorded_at == ConsentRecord.recorded_at, newer.id > ConsentRecord.id),
        ),
    )


def forget_superseded_consents(session: Session, recorded_before: datetime) -> int:
    """Retention: delete the consent records made before ``recorded_before`` that a newer
    record of the same supporter and channel has superseded; how many. The newest is kept as
    long as the supporter is: it is the proof of the consent the sender relies on."""
    result = session.execute(
        delete(ConsentRecord)
        .where(ConsentRecord.recorded_at < recorded_before, ~is_newest_consent())
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def consents_carried_by(session: Session, carriers: Mapping[int, uuid.UUID]) -> None:
    """Note, per consent record id, the event that carries the consent on the log now
    (retention restated it there before the event that first carried it was deleted)."""
    if carriers:
        session.execute(
            update(ConsentRecord),
            [{"id": record_id, "event_id": event_id} for record_id, event_id in carriers.items()],
        )
