"""A follow-up task's life: stored from ``task.created``, claimed, released, completed or
reopened by an outcome, cancelled; every change written to ``task_events`` with who and when.
The one writer of ``tasks`` and ``task_events`` (an erasure cancels through
``consumers/erasure.py``). The caller owns the session; time comes in as ``now``.

Routing is decided when the queue is read: a task keeps its supporter's postcode district,
and whichever group owns that district sees it (``visible_to``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from consumers.organising.rules import (
    ACTIVE,
    CANCELLED,
    CLAIMED,
    DONE,
    HELD_OUT,
    OPEN,
    Acting,
    Conflict,
    NotFound,
    check_outcome,
    holdout_reason,
    outcome_effect,
    retriggered,
)
from infra.consent import newest_consents
from infra.db import (
    FollowUpTask,
    GroupArea,
    Supporter,
    SupporterAlias,
    TaskEvent,
    dialect_insert,
)
from schemas.events import OutcomeKind, TaskCreated, postcode_district

PLAYBOOK, SYSTEM = "playbook", "system"
"""Who changed a task when no organiser did: the stream's rules, or time (an expired claim,
a merge or an opt-out noticed when the queue is read)."""
CHANNELS = ("email", "sms")
OPTED_OUT = "the supporter opted out of contact on every channel"


def record(
    session: Session,
    task_id: str,
    at: datetime,
    by: str,
    action: str,
    detail: dict[str, Any] | None = None,
    note: str | None = None,
) -> None:
    """One line of a task's history."""
    session.add(
        TaskEvent(task_id=task_id, at=at, by=by[:40], action=action, detail=detail or {}, note=note)
    )


# --- stored from task.created -----------------------------------------------------------------


def store_tasks(session: Session, tasks: Sequence[TaskCreated], now: datetime | None = None) -> int:
    """Record follow-up tasks; returns how many task ids were new. A known task id changes
    nothing (a replay, a redelivery).

    A new task goes to its supporter's postcode district. One open task per supporter and
    kind: a second trigger updates the open one (``rules.retriggered``: the newer reason, the
    earlier due time, the more urgent priority) and is itself kept as cancelled, superseded,
    so that its id stays known. A hold-out group's task is held out (never queued); a task for
    a supporter who has withdrawn consent on every channel is cancelled from the start.
    """
    now = now or datetime.now(UTC)
    unique: dict[str, TaskCreated] = {}
    for task in tasks:
        unique.setdefault(task.task_id, task)
    if not unique:
        return 0
    known = set(
        session.scalars(select(FollowUpTask.task_id).where(FollowUpTask.task_id.in_(unique)))
    )
    fresh = [t for t in unique.values() if t.task_id not in known]
    if not fresh:
        return 0
    sids = {t.supporter_id for t in fresh}
    postcodes = dict(
        session.execute(
            select(Supporter.supporter_id, Supporter.postcode).where(
                Supporter.supporter_id.in_(sids)
            )
        ).all()
    )
    withdrawn = opted_out(session, sids)
    stored = 0
    for task in fresh:
        district = postcode_district(postcodes.get(task.supporter_id))
        if task.holdout:
            stored += _insert(session, task, district, now, HELD_OUT, holdout_reason(task.rule))
        elif task.supporter_id in withdrawn:
            stored += _insert(session, task, district, now, CANCELLED, OPTED_OUT)
        else:
            stored += _open_or_update(session, task, district, now)
    return stored


def _open_or_update(
    session: Session, task: TaskCreated, district: str | None, now: datetime
) -> int:
    current = session.scalars(
        select(FollowUpTask)
        .where(
            FollowUpTask.supporter_id == task.supporter_id,
            FollowUpTask.kind == task.kind,
            FollowUpTask.status.in_(ACTIVE),
        )
        .with_for_update()
    ).first()
    if current is None:
        return _insert(session, task, district, now, OPEN, None)
    if not _insert(
        session, task, district, now, CANCELLED, f"superseded: updated {current.task_id}"
    ):
        return 0
    change = retriggered(
        current.reason, current.due_at, current.priority, task.reason, task.due_at, task.priority
    )
    before = {"reason": current.reason, "due_at": current.due_at, "priority": current.priority}
    current.reason, current.due_at, current.priority = change.reason, change.due_at, change.priority
    if district is not None:
        current.district = district
    after = {"reason": change.reason, "due_at": change.due_at, "priority": change.priority}
    record(
        session,
        current.task_id,
        now,
        PLAYBOOK,
        "retriggered",
        {
            "by_task": task.task_id,
            "rule": task.rule,
            "changed": {
                k: [_plain(before[k]), _plain(v)] for k, v in after.items() if before[k] != v
            },
        },
    )
    return 1


def _insert(
    session: Session,
    task: TaskCreated,
    district: str | None,
    now: datetime,
    status: str,
    reason: str | None,
) -> int:
    """Insert the task's row unless its id is known (0 then), with its first history line."""
    statement = (
        dialect_insert(session, FollowUpTask)
        .values(
            task_id=task.task_id,
            supporter_id=task.supporter_id,
            kind=task.kind,
            reason=task.reason,
            due_at=task.due_at,
            area=task.area,
            rule=task.rule,
            cause_event_id=task.cause_event_id,
            priority=task.priority,
            status=status,
            district=district,
            status_reason=reason,
            closed_at=now if status == CANCELLED else None,
            created_at=now,
            attempts=0,
        )
        .on_conflict_do_nothing(index_elements=[FollowUpTask.task_id])
        .returning(FollowUpTask.task_id)
    )
    if session.execute(statement).first() is None:
        return 0
    detail: dict[str, Any] = {"status": status, "rule": task.rule, "district": district}
    if reason:
        detail["reason"] = reason
    record(session, task.task_id, now, PLAYBOOK, "created", detail)
    return 1


def opted_out(session: Session, supporter_ids: Collection[str]) -> set[str]:
    """Supporters whose newest consent on every channel is a withdrawal."""
    latest = newest_consents(session, supporter_ids)
    return {
        sid
        for sid in supporter_ids
        if all((row := latest.get((sid, c))) is not None and not row.granted for c in CHANNELS)
    }


# --- what time and other changes decide --------------------------------------------------------


def settle(session: Session, now: datetime, task_ids: Collection[str] | None = None) -> None:
    """Apply what has happened since these tasks (None: all) were last looked at: a claim past
    its expiry is open again (recorded at the moment it expired), and the tasks of a supporter
    merged into another, or who has since withdrawn consent on every channel, are cancelled.
    Every read and change of the queue settles the tasks it touches first."""
    if task_ids is not None and not task_ids:
        return
    scope = [FollowUpTask.task_id.in_(list(task_ids))] if task_ids is not None else []
    expired = session.execute(
        select(FollowUpTask.task_id, FollowUpTask.claimed_by, FollowUpTask.claimed_until).where(
            FollowUpTask.status == CLAIMED, FollowUpTask.claimed_until <= now, *scope
        )
    ).all()
    for task_id, claimed_by, claimed_until in expired:
        moved = session.execute(
            update(FollowUpTask)
            .where(
                FollowUpTask.task_id == task_id,
                FollowUpTask.status == CLAIMED,
                FollowUpTask.claimed_until <= now,
            )
            .values(status=OPEN, claimed_by=None, claimed_until=None)
            .returning(FollowUpTask.task_id)
        ).first()
        if moved is not None:
            record(
                session,
                task_id,
                claimed_until or now,
                SYSTEM,
                "claim_expired",
                {"claimed_by": claimed_by},
            )
    merged = session.execute(
        select(FollowUpTask.task_id, SupporterAlias.survivor_id)
        .join(SupporterAlias, SupporterAlias.absorbed_id == FollowUpTask.supporter_id)
        .where(FollowUpTask.status.in_(ACTIVE), *scope)
    ).all()
    for task_id, survivor in merged:
        cancel(session, [task_id], now, SYSTEM, f"the supporter was merged into {survivor}")
    active = session.execute(
        select(FollowUpTask.task_id, FollowUpTask.supporter_id).where(
            FollowUpTask.status.in_(ACTIVE), *scope
        )
    ).all()
    withdrawn = opted_out(session, {sid for _, sid in active})
    cancel(session, [t for t, sid in active if sid in withdrawn], now, SYSTEM, OPTED_OUT)


def cancel(
    session: Session, task_ids: Sequence[str], now: datetime, by: str, reason: str
) -> list[str]:
    """Cancel these tasks if still open or claimed; the ones cancelled."""
    if not task_ids:
        return []
    done = list(
        session.scalars(
            update(FollowUpTask)
            .where(FollowUpTask.task_id.in_(list(task_ids)), FollowUpTask.status.in_(ACTIVE))
            .values(
                status=CANCELLED,
                claimed_by=None,
                claimed_until=None,
                closed_at=now,
                status_reason=reason[:300],
            )
            .returning(FollowUpTask.task_id)
        )
    )
    for task_id in sorted(done):
        record(session, task_id, now, by, "cancelled", {"reason": reason})
    return done


def cancel_supporter_tasks(
    session: Session, supporter_ids: Collection[str], now: datetime, by: str, reason: str
) -> list[str]:
    """Cancel every open or claimed task of these supporters."""
    ids = list(
        session.scalars(
            select(FollowUpTask.task_id).where(
                FollowUpTask.supporter_id.in_(list(supporter_ids)),
                FollowUpTask.status.in_(ACTIVE),
            )
        )
    )
    return cancel(session, ids, now, by, reason)


# --- who sees what -----------------------------------------------------------------------------


def visible_to(who: Acting) -> ColumnElement[bool]:
    """SQL: the task is routed to one of the organiser's groups (its district is theirs); for
    an admin, also the national queue (a district nobody owns, or none). Held-out tasks are
    nobody's."""
    mine: ColumnElement[bool] = FollowUpTask.district.in_(
        select(GroupArea.district).where(GroupArea.group_id.in_(who.group_ids))
    )
    if who.is_admin:
        mine = or_(mine, national())
    return and_(FollowUpTask.status != HELD_OUT, mine)


def national() -> ColumnElement[bool]:
    """SQL: the task's district is owned by no group, or unknown."""
    return or_(
        FollowUpTask.district.is_(None),
        FollowUpTask.district.not_in(select(GroupArea.district)),
    )


def visible_task(session: Session, who: Acting, task_id: str) -> FollowUpTask:
    """The task, if it is routed to the organiser; else NotFound (also when there is none)."""
    task = session.scalars(
        select(FollowUpTask).where(FollowUpTask.task_id == task_id, visible_to(who))
    ).first()
    if task is None:
        raise NotFound(f"no task {task_id!r}")
    return task


def settled_task(session: Session, who: Acting, task_id: str, now: datetime) -> FollowUpTask:
    """The task, if routed to the organiser (NotFound otherwise: nothing is settled for a
    task they may not see), settled as of ``now``."""
    task = visible_task(session, who, task_id)
    settle(session, now, [task_id])
    session.refresh(task)
    return task


# --- an organiser's changes ---------------------------------------------------------------------


def claim(
    session: Session, who: Acting, task_id: str, now: datetime, claim_for: timedelta
) -> FollowUpTask:
    """Claim an open task until ``now + claim_for`` (claiming one's own claim again renews
    it). NotFound for a task not routed to the organiser; Conflict when someone else holds it
    or it is done or cancelled. Of two organisers claiming at once, one gets it."""
    task = settled_task(session, who, task_id, now)
    if task.status not in ACTIVE:
        raise Conflict(f"task {task_id} is {task.status}")
    until = now + claim_for
    got = session.execute(
        update(FollowUpTask)
        .where(
            FollowUpTask.task_id == task_id,
            or_(
                FollowUpTask.status == OPEN,
                and_(
                    FollowUpTask.status == CLAIMED,
                    FollowUpTask.claimed_by == who.organiser_id,
                ),
            ),
        )
        .values(status=CLAIMED, claimed_by=who.organiser_id, claimed_until=until)
        .returning(FollowUpTask.task_id)
    ).first()
    if got is None:
        session.refresh(task)
        raise Conflict(
            f"task {task_id} is claimed by {task.claimed_by} until {_plain(task.claimed_until)}"
        )
    record(session, task_id, now, who.organiser_id, "claimed", {"until": _plain(until)})
    session.refresh(task)
    return task


def release(session: Session, who: Acting, task_id: str, now: datetime) -> FollowUpTask:
    """Give a claimed task back to the queue: the claimer, or a lead of a group it is routed
    to (NotFound for a task not routed to the organiser; Conflict if not claimed by them)."""
    task = settled_task(session, who, task_id, now)
    if task.status != CLAIMED:
        raise Conflict(f"task {task_id} is {task.status}, not claimed")
    if task.claimed_by != who.organiser_id and not _leads_task(session, who, task):
        raise Conflict(f"task {task_id} is claimed by {task.claimed_by}")
    holder = task.claimed_by
    got = session.execute(
        update(FollowUpTask)
        .where(
            FollowUpTask.task_id == task_id,
            FollowUpTask.status == CLAIMED,
            FollowUpTask.claimed_by == holder,
        )
        .values(status=OPEN, claimed_by=None, claimed_until=None)
        .returning(FollowUpTask.task_id)
    ).first()
    if got is None:
        raise Conflict(f"task {task_id} changed meanwhile; look again")
    record(session, task_id, now, who.organiser_id, "released", {"claimed_by": holder})
    session.refresh(task)
    return task


def release_all(session: Session, organiser_id: str, now: datetime, by: str) -> list[str]:
    """Release every claim an organiser holds (they were disabled)."""
    ids = list(
        session.scalars(
            update(FollowUpTask)
            .where(FollowUpTask.status == CLAIMED, FollowUpTask.claimed_by == organiser_id)
            .values(status=OPEN, claimed_by=None, claimed_until=None)
            .returning(FollowUpTask.task_id)
        )
    )
    for task_id in sorted(ids):
        record(session, task_id, now, by, "released", {"claimed_by": organiser_id})
    return ids


def _leads_task(session: Session, who: Acting, task: FollowUpTask) -> bool:
    owner = session.scalar(select(GroupArea.group_id).where(GroupArea.district == task.district))
    return owner in who.led_group_ids or (owner is None and who.is_admin)


@dataclass(frozen=True)
class Completion:
    """What an outcome did to its task."""

    task_id: str
    supporter_id: str
    kind: str
    attempt: int
    """This outcome's number on the task (1 for the first)."""
    status: str
    reopened: bool
    due_at: datetime


def complete(
    session: Session,
    who: Acting,
    task_id: str,
    outcome: OutcomeKind,
    commitment: str | None,
    note: str | None,
    now: datetime,
) -> Completion:
    """Record an outcome on the task: done, or reopened a day later after a first no-answer
    (``rules.outcome_effect``). The task must be open or claimed by this organiser.
    ValueError for an invalid outcome, NotFound, or Conflict."""
    check_outcome(outcome, commitment, note)
    task = settled_task(session, who, task_id, now)
    if task.status not in ACTIVE:
        raise Conflict(f"task {task_id} is {task.status}")
    if task.status == CLAIMED and task.claimed_by != who.organiser_id:
        raise Conflict(f"task {task_id} is claimed by {task.claimed_by}")
    effect = outcome_effect(outcome, task.attempts, now)
    values: dict[str, Any] = {
        "status": effect.status,
        "claimed_by": None,
        "claimed_until": None,
        "attempts": task.attempts + 1,
        "outcome": outcome,
    }
    if effect.status == DONE:
        values["closed_at"] = now
    if effect.due_at is not None:
        values["due_at"] = effect.due_at
    got = session.execute(
        update(FollowUpTask)
        .where(
            FollowUpTask.task_id == task_id,
            FollowUpTask.status == task.status,
            FollowUpTask.attempts == task.attempts,
        )
        .values(**values)
        .returning(FollowUpTask.task_id)
    ).first()
    if got is None:
        raise Conflict(f"task {task_id} changed meanwhile; look again")
    detail: dict[str, Any] = {"outcome": outcome, "status": effect.status}
    if commitment is not None:
        detail["commitment"] = commitment
    if effect.reopened:
        detail["due_at"] = _plain(effect.due_at)
    record(session, task_id, now, who.organiser_id, "outcome", detail, note or None)
    session.refresh(task)
    return Completion(
        task_id=task_id,
        supporter_id=task.supporter_id,
        kind=task.kind,
        attempt=task.attempts,
        status=effect.status,
        reopened=effect.reopened,
        due_at=task.due_at,
    )


def history(session: Session, task_id: str) -> list[dict[str, Any]]:
    """A task's changes, oldest first (the caller has checked the task is visible)."""
    rows = session.scalars(
        select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id)
    )
    return [
        {"at": r.at, "by": r.by, "action": r.action, "detail": dict(r.detail or {}), "note": r.note}
        for r in rows
    ]


def _plain(value: Any) -> Any:
    """A value for the JSON ``detail`` column."""
    return value.isoformat() if isinstance(value, datetime) else value
