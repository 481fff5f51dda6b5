"""Retention on the ingest side: the ledger's rows past their topic's retention, the provider
webhook receipts and the notes of re-driven dead letters past theirs; and, before a consent's
event leaves the log, the consent restated on it, so that the stream never loses a consent the
sender still relies on.

Called by ``engage/retention.py`` in one transaction with the consumers' part; the caller owns
the session. A ledger row's age is its ``accepted_at``, which the relay stamps on its Kafka
record: the age Kafka's ``retention.ms`` goes by, so the ledger and the topics drop the same
events.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Delete, and_, delete, exists, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased

from infra.consent import consents_carried_by, is_newest_consent
from infra.db import ConsentRecord, DeadLetterRedrive, LedgerEvent, WebhookReceipt
from infra.outbox import ledger_row
from schemas.catalogue import INPUT_TOPICS
from schemas.events import ConsentChanged, IdentityMerged, SupporterErased

RESTATE_AHEAD = timedelta(days=30)
"""A consent is restated this long before its event passes retention: Kafka never deletes a
record before its retention is up, so the restatement is on the topic before the original goes,
as long as retention is applied at least this often (``retention_check_hours`` is a week at
most)."""
ACTIVITY_TOPICS = tuple(
    topic
    for topic in INPUT_TOPICS
    if topic not in (ConsentChanged.topic, IdentityMerged.topic, SupporterErased.topic)
)
"""What a supporter does (signing, coming, bringing, clicking...), as opposed to what is
recorded about them (consent, merges, erasure)."""
_STILL_HERE = tuple(topic for topic in INPUT_TOPICS if topic != SupporterErased.topic)


def restate_consents(session: Session, events_before: datetime, now: datetime) -> int:
    """Restate on the log, as a ``consent.changed`` event, each newest consent whose event
    leaves the log within ``RESTATE_AHEAD`` of ``events_before`` while the supporter has other
    activity that stays; how many.

    The stream learns consent only from the log (a signup's boxes, consent changes), and
    rebuilds its state from what the log still holds: without this, an active supporter who
    signed up two years ago would lose their consent in the stream the day their signup left
    the log, and never be nudged again. The event keeps the record's time, channel, grant and
    wording; its source says it is a restatement (``retention:<source>``). The consent record
    itself is unchanged but for the event that now carries it. A supporter with no other
    activity left is lapsed: their consent stays in the ``consent`` table as proof, and the
    log forgets them (a new signup records it again).
    """
    restate_before = events_before + RESTATE_AHEAD
    original, later = aliased(LedgerEvent), aliased(LedgerEvent)
    rows = session.execute(
        select(
            ConsentRecord.id,
            ConsentRecord.supporter_id,
            ConsentRecord.channel,
            ConsentRecord.granted,
            ConsentRecord.source,
            ConsentRecord.wording_version,
            ConsentRecord.recorded_at,
        )
        .where(
            is_newest_consent(),
            exists().where(
                original.event_id == ConsentRecord.event_id,
                original.accepted_at < restate_before,
            ),
            exists().where(
                later.key == ConsentRecord.supporter_id,
                later.topic.in_(ACTIVITY_TOPICS),
                later.accepted_at >= restate_before,
            ),
        )
        .order_by(ConsentRecord.id)
    ).all()
    carriers: dict[int, uuid.UUID] = {}
    for record_id, sid, channel, granted, source, wording, recorded_at in rows:
        event = ConsentChanged(
            event_time=recorded_at,
            supporter_id=sid,
            channel=channel,
            granted=granted,
            source=f"retention:{source}",
            wording_version=wording,
        )
        session.add(ledger_row(event, now))
        carriers[record_id] = event.event_id
    consents_carried_by(session, carriers)
    return len(rows)


def forget_events(session: Session, accepted_before: Mapping[str, datetime]) -> dict[str, int]:
    """Delete the ledger rows of each topic accepted before its cutoff (topics not named are
    kept forever); rows deleted per topic, those with none left out."""
    by_cutoff: dict[datetime, list[str]] = defaultdict(list)
    for topic, cutoff in accepted_before.items():
        by_cutoff[cutoff].append(topic)
    if not by_cutoff:
        return {}
    past = or_(
        *(
            and_(LedgerEvent.topic.in_(topics), LedgerEvent.accepted_at < cutoff)
            for cutoff, topics in by_cutoff.items()
        )
    )
    counts = dict(
        session.execute(
            select(LedgerEvent.topic, func.count()).where(past).group_by(LedgerEvent.topic)
        ).all()
    )
    _deleted(session, delete(LedgerEvent).where(past))
    return {topic: int(n) for topic, n in sorted(counts.items())}


def event_in_log(event_id: InstrumentedAttribute[Any]) -> ColumnElement[bool]:
    """SQL: the event with this id is still in the ledger (so a replay, or the embedded
    broker's republishing, folds it again)."""
    return exists().where(LedgerEvent.event_id == event_id)


def supporter_in_log(supporter_id: InstrumentedAttribute[Any]) -> ColumnElement[bool]:
    """SQL: the ledger still holds an input event keyed by this supporter id (an erasure's
    ``supporter.erased`` aside: the stream decides nothing for an erased id)."""
    return exists().where(LedgerEvent.key == supporter_id, LedgerEvent.topic.in_(_STILL_HERE))


def forget_receipts(session: Session, received_before: datetime) -> int:
    """Delete the webhook receipts older than ``received_before``: the providers stopped
    retrying those deliveries long before (SendGrid retries for 24 hours)."""
    return _deleted(
        session, delete(WebhookReceipt).where(WebhookReceipt.received_at < received_before)
    )


def forget_redrives(session: Session, redriven_before: datetime) -> int:
    """Delete the notes of dead letters re-driven before ``redriven_before``: the letters
    themselves have left the deadletter topic (same retention)."""
    return _deleted(
        session, delete(DeadLetterRedrive).where(DeadLetterRedrive.redriven_at < redriven_before)
    )


def _deleted(session: Session, statement: Delete) -> int:
    result = session.execute(statement, execution_options={"synchronize_session": False})
    return int(result.rowcount)  # type: ignore[attr-defined]
