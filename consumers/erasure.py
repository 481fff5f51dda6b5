"""A UK GDPR erasure's part on the consumers' side: nudges not yet sent are cancelled, the
address-derived columns blanked, the local outbox's copies (address and body) deleted, open
and claimed tasks cancelled, organisers' notes on their tasks blanked and the stored score
deleted.

Nudge and task rows are kept, cancelled, under their idempotency keys: a nudge.requested or
task.created still on its topic then finds its key taken and is not stored again (``ON
CONFLICT DO NOTHING``). Called by ``engage/erasure.py`` in its transaction.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from consumers.organising.tasks import cancel_supporter_tasks
from infra.db import FollowUpTask, Nudge, OutboxMessage, SupporterScore, TaskEvent

CANCELLABLE = ("pending", "held")
"""Nudge states not yet handed to a provider: an erasure cancels them."""


def sent_to(session: Session, ids: Collection[str]) -> list[tuple[str, str]]:
    """(channel, contact key) of every address a nudge of these ids went to."""
    rows = session.execute(
        select(Nudge.channel, Nudge.recipient).where(
            Nudge.supporter_id.in_(list(ids)), Nudge.recipient.is_not(None)
        )
    )
    return [(channel, recipient) for channel, recipient in rows if recipient]


def forget_outputs(
    session: Session, ids: Collection[str], now: datetime | None = None
) -> dict[str, int]:
    """Cancel, blank and delete the consumers' rows of these ids; rows changed, per table.
    Open and claimed tasks are cancelled (their history says so, by ``erasure``), and the
    organisers' notes on their tasks blanked."""
    now = now or datetime.now(UTC)
    wanted = list(ids)
    theirs = select(Nudge.nudge_id).where(Nudge.supporter_id.in_(wanted))
    statements = (
        ("outbox", delete(OutboxMessage).where(OutboxMessage.nudge_id.in_(theirs))),
        (
            "nudges",
            update(Nudge)
            .where(Nudge.supporter_id.in_(wanted), Nudge.status.in_(CANCELLABLE))
            .values(status="cancelled", reason="erased", reason_code="erased", not_before=None),
        ),
        (
            "nudges.recipient",
            update(Nudge)
            .where(Nudge.supporter_id.in_(wanted), Nudge.recipient.is_not(None))
            .values(recipient=None),
        ),
        (
            "task_events.note",
            update(TaskEvent)
            .where(
                TaskEvent.task_id.in_(
                    select(FollowUpTask.task_id).where(FollowUpTask.supporter_id.in_(wanted))
                ),
                TaskEvent.note.is_not(None),
            )
            .values(note=None),
        ),
        (
            "supporter_scores",
            delete(SupporterScore).where(SupporterScore.supporter_id.in_(wanted)),
        ),
    )
    counts: dict[str, int] = {}
    for table, statement in statements:
        counts[table] = int(
            session.execute(statement, execution_options={"synchronize_session": False}).rowcount  # type: ignore[attr-defined]
        )
    counts["tasks"] = len(cancel_supporter_tasks(session, wanted, now, "erasure", "erased"))
    return counts
