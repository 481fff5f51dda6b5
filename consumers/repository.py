"""Nudge, task, consent and contact rows: the consumers' reads and idempotent writes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from infra.db import (
    ConsentRecord,
    FollowUpTask,
    Nudge,
    OutboxMessage,
    Supporter,
    insert_ignoring_duplicates,
)
from schemas.events import NudgeRequested, TaskCreated


def store_nudges(session: Session, nudges: Sequence[NudgeRequested]) -> int:
    """Record requested nudges as pending; a known idempotency key is ignored."""
    return insert_ignoring_duplicates(
        session,
        Nudge,
        [
            {
                "nudge_id": n.nudge_id,
                "supporter_id": n.supporter_id,
                "channel": n.channel,
                "template": n.template,
                "rule": n.rule,
                "cause_event_id": n.cause_event_id,
                "context": dict(n.context),
                "status": "pending",
                "requested_at": n.event_time,
            }
            for n in nudges
        ],
    )


def store_tasks(session: Session, tasks: Sequence[TaskCreated]) -> int:
    """Record follow-up tasks as open; a known task id is ignored."""
    return insert_ignoring_duplicates(
        session,
        FollowUpTask,
        [
            {
                "task_id": t.task_id,
                "supporter_id": t.supporter_id,
                "kind": t.kind,
                "reason": t.reason,
                "due_at": t.due_at,
                "area": t.area,
                "rule": t.rule,
                "cause_event_id": t.cause_event_id,
                "status": "open",
            }
            for t in tasks
        ],
    )


def pending_nudges(
    session: Session, limit: int, nudge_ids: Sequence[str] | None = None
) -> list[Nudge]:
    query = select(Nudge).where(Nudge.status == "pending")
    if nudge_ids is not None:
        query = query.where(Nudge.nudge_id.in_(nudge_ids))
    return list(session.scalars(query.order_by(Nudge.created_at).limit(limit)))


def claim_nudges(session: Session, nudge_ids: Sequence[str]) -> set[str]:
    """Move these nudges from pending to sending; return the ones this caller got."""
    if not nudge_ids:
        return set()
    return set(
        session.scalars(
            update(Nudge)
            .where(Nudge.nudge_id.in_(nudge_ids), Nudge.status == "pending")
            .values(status="sending")
            .returning(Nudge.nudge_id)
        )
    )


def set_nudge_status(
    session: Session,
    nudge_id: str,
    status: str,
    reason: str | None = None,
    provider_message_id: str | None = None,
) -> None:
    session.execute(
        update(Nudge)
        .where(Nudge.nudge_id == nudge_id)
        .values(status=status, reason=reason, provider_message_id=provider_message_id)
    )


def consented(session: Session, wanted: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which (supporter_id, channel) pairs have a newest consent record that grants."""
    supporters = {supporter_id for supporter_id, _ in wanted}
    if not supporters:
        return set()
    latest: dict[tuple[str, str], bool] = {}
    rows = session.execute(
        select(ConsentRecord.supporter_id, ConsentRecord.channel, ConsentRecord.granted)
        .where(ConsentRecord.supporter_id.in_(supporters))
        .order_by(ConsentRecord.recorded_at, ConsentRecord.id)
    )
    for supporter_id, channel, granted in rows:
        latest[(supporter_id, channel)] = granted
    return {pair for pair in wanted if latest.get(pair)}


def contacts(session: Session, supporter_ids: Sequence[str]) -> dict[str, Supporter]:
    rows = session.scalars(select(Supporter).where(Supporter.supporter_id.in_(supporter_ids)))
    return {row.supporter_id: row for row in rows}


def pending_nudge_ids(session: Session, limit: int) -> list[str]:
    return [nudge.nudge_id for nudge in pending_nudges(session, limit)]


def claim_nudge(session: Session, nudge_id: str) -> Nudge | None:
    """Claim one nudge; None when it is not pending (sent, or another sender has it)."""
    return session.get(Nudge, nudge_id) if claim_nudges(session, [nudge_id]) else None


def has_consent(session: Session, supporter_id: str, channel: str) -> bool:
    """True when the newest consent record for this channel grants it (ties: the later
    written). Grants are stamped no later than their arrival (producers/ledger.py), so a
    withdrawal always sorts after the grant it withdraws, and a late-arriving old grant
    cannot undo a newer withdrawal."""
    return (supporter_id, channel) in consented(session, [(supporter_id, channel)])


def write_outbox(
    session: Session,
    nudge_id: str,
    channel: str,
    to_address: str,
    subject: str | None,
    body: str,
    created_at: datetime,
) -> None:
    session.add(
        OutboxMessage(
            nudge_id=nudge_id,
            channel=channel,
            to_address=to_address,
            subject=subject,
            body=body,
            created_at=created_at,
        )
    )


def list_outbox(session: Session, limit: int) -> list[dict[str, Any]]:
    rows = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id).limit(limit))
    return [
        {
            "nudge_id": r.nudge_id,
            "channel": r.channel,
            "to": r.to_address,
            "subject": r.subject,
            "body": r.body,
            "created_at": r.created_at.isoformat(),
        }
        for r in rows
    ]


def list_tasks(session: Session, limit: int) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(FollowUpTask).order_by(FollowUpTask.due_at, FollowUpTask.task_id).limit(limit)
    )
    return [
        {
            "task_id": r.task_id,
            "supporter_id": r.supporter_id,
            "kind": r.kind,
            "reason": r.reason,
            "due_at": r.due_at.isoformat(),
            "area": r.area,
            "status": r.status,
            "rule": r.rule,
        }
        for r in rows
    ]
