"""A UK GDPR erasure's part on the consumers' side: nudges not yet sent are cancelled, the
address-derived columns blanked, the local outbox's copies (address and body) deleted, open
tasks cancelled and the stored score deleted.

Nudge and task rows are kept, cancelled, under their idempotency keys: a nudge.requested or
task.created still on its topic then finds its key taken and is not stored again (``ON
CONFLICT DO NOTHING``). Called by ``engage/erasure.py`` in its transaction.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from infra.db import FollowUpTask, Nudge, OutboxMessage, SupporterScore

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


def forget_outputs(session: Session, ids: Collection[str]) -> dict[str, int]:
    """Cancel, blank and delete the consumers' rows of these ids; rows changed, per table."""
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
            "tasks",
            update(FollowUpTask)
            .where(FollowUpTask.supporter_id.in_(wanted), FollowUpTask.status == "open")
            .values(status="cancelled"),
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
    return counts
