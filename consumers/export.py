"""A subject access request's reads of what the consumers hold about a person: the stored score
and rung, the nudges (with the message written for each) and the organisers' follow-up tasks.

Plain dicts out; ``engage/export.py`` composes them into the documented ``SubjectAccessExport``.
Reads only: the caller owns the session.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from consumers.organising.tasks import history
from infra.db import FollowUpTask, Nudge, OutboxMessage, SupporterScore


def stored_score(session: Session, supporter_id: str) -> dict[str, Any] | None:
    """The newest score and rung the consumers stored (only the current one is kept)."""
    row = session.get(SupporterScore, supporter_id)
    if row is None:
        return None
    return {
        "score": row.score,
        "rung": row.rung,
        "as_of": row.as_of,
        "cause_event_id": row.cause_event_id,
        "updated_at": row.updated_at,
    }


def nudges(session: Session, supporter_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Every nudge requested for them, oldest first, with what became of it and, when it went
    to the local outbox, the message itself."""
    rows = session.execute(
        select(Nudge, OutboxMessage)
        .outerjoin(OutboxMessage, OutboxMessage.nudge_id == Nudge.nudge_id)
        .where(Nudge.supporter_id.in_(supporter_ids))
        .order_by(Nudge.requested_at, Nudge.nudge_id)
    ).all()
    return [
        {
            "nudge_id": n.nudge_id,
            "supporter_id": n.supporter_id,
            "channel": n.channel,
            "template": n.template,
            "rule": n.rule,
            "context": dict(n.context or {}),
            "requested_at": n.requested_at,
            "status": n.status,
            "reason_code": n.reason_code,
            "reason": n.reason,
            "attempts": n.attempts,
            "sent_at": n.sent_at,
            "provider": n.provider,
            "delivery_status": n.delivery_status,
            "delivery_updated_at": n.delivery_updated_at,
            "recipient": n.recipient,
            "message": None
            if m is None
            else {
                "to_address": m.to_address,
                "subject": m.subject,
                "body": m.body,
                "created_at": m.created_at,
            },
        }
        for n, m in rows
    ]


def tasks(session: Session, supporter_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The organisers' follow-up tasks about them, oldest first, each with its history (and
    the organisers' notes)."""
    rows = session.scalars(
        select(FollowUpTask)
        .where(FollowUpTask.supporter_id.in_(supporter_ids))
        .order_by(FollowUpTask.created_at, FollowUpTask.task_id)
    )
    return [
        {
            "task_id": t.task_id,
            "supporter_id": t.supporter_id,
            "kind": t.kind,
            "reason": t.reason,
            "due_at": t.due_at,
            "area": t.area,
            "rule": t.rule,
            "priority": t.priority,
            "status": t.status,
            "created_at": t.created_at,
            "history": history(session, t.task_id),
        }
        for t in rows
    ]
