"""Retention on the consumers' side: nudges, their local outbox copies, follow-up tasks and
stored scores, once past their retention and no longer derivable from the log.

A nudge or task is deleted when it is older than its retention and the event that caused it
has left the log. One whose key a rule gives once per supporter (``rule:supporter``, a
``cooldown_days: once`` rule) is kept while the supporter has events left in the log: those
could decide it again (a second meeting becomes the first once the first has gone), and the
stored key is what stops a replay, or the embedded broker's republishing, from storing it
anew. An outbox copy goes with its nudge, or after its own, shorter, retention; a task's
history (``task_events``, with organisers' notes) goes with the task. A stored score
goes when every action it was built from has passed retention and the supporter has nothing
left in the log.

Called by ``engage/retention.py`` in its transaction; what the ledger still holds is asked
through the two predicates it passes in (``producers.retention`` owns the ledger's side).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Delete, and_, delete, false, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from infra.db import FollowUpTask, Nudge, OutboxMessage, SupporterScore, TaskEvent

InLog = Callable[[InstrumentedAttribute[Any]], ColumnElement[bool]]
"""SQL predicate over a column: its event (or supporter) is still in the ledger."""
IN_FLIGHT = ("sending",)
"""Nudge states a sender holds right now: never deleted under it."""


def forget_outputs(
    session: Session,
    *,
    nudges_before: datetime | None,
    outbox_before: datetime | None,
    tasks_before: datetime | None,
    scores_before: datetime | None,
    event_in_log: InLog,
    supporter_in_log: InLog,
) -> dict[str, int]:
    """Delete what is past retention (None: kept forever); rows deleted, per table."""
    nudges_gone: ColumnElement[bool] = false()
    if nudges_before is not None:
        nudges_gone = and_(
            Nudge.requested_at < nudges_before,
            Nudge.status.not_in(IN_FLIGHT),
            _underivable(Nudge.nudge_id, Nudge, event_in_log, supporter_in_log),
        )
    outbox_gone: ColumnElement[bool] = OutboxMessage.nudge_id.in_(
        select(Nudge.nudge_id).where(nudges_gone)
    )
    if outbox_before is not None:
        outbox_gone = or_(outbox_gone, OutboxMessage.created_at < outbox_before)
    statements: list[tuple[str, Delete]] = [
        ("outbox", delete(OutboxMessage).where(outbox_gone)),
        ("nudges", delete(Nudge).where(nudges_gone)),
    ]
    if tasks_before is not None:
        tasks_gone = and_(
            FollowUpTask.due_at < tasks_before,
            _underivable(FollowUpTask.task_id, FollowUpTask, event_in_log, supporter_in_log),
        )
        history = TaskEvent.task_id.in_(select(FollowUpTask.task_id).where(tasks_gone))
        statements.append(("task_events", delete(TaskEvent).where(history)))
        statements.append(("tasks", delete(FollowUpTask).where(tasks_gone)))
    if scores_before is not None:
        scores_gone = and_(
            SupporterScore.as_of < scores_before, ~supporter_in_log(SupporterScore.supporter_id)
        )
        statements.append(("supporter_scores", delete(SupporterScore).where(scores_gone)))
    counts: dict[str, int] = {}
    for table, statement in statements:
        result = session.execute(statement, execution_options={"synchronize_session": False})
        counts[table] = int(result.rowcount)  # type: ignore[attr-defined]
    return counts


def _underivable(
    key: InstrumentedAttribute[str],
    model: type[Nudge] | type[FollowUpTask],
    event_in_log: InLog,
    supporter_in_log: InLog,
) -> ColumnElement[bool]:
    """SQL: nothing left in the log can decide this output again: its cause is gone, and it is
    not a once-per-supporter output of a supporter still in the log."""
    once_per_supporter = key == model.rule + ":" + model.supporter_id
    return and_(
        ~event_in_log(model.cause_event_id),
        ~and_(once_per_supporter, supporter_in_log(model.supporter_id)),
    )
