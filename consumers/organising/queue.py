"""What organisers read: their groups' queue (and why it is empty), one task with its
history, the escalations a lead sees, and a group's leader candidates and leaders. Each read
settles the tasks it shows first (expired claims, merges, opt-outs), so it may write."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from consumers.organising.directory import districts_of, group_view
from consumers.organising.rules import ACTIVE, CLAIMED, Acting, NotFound, Refused, queue_order
from consumers.organising.tasks import history, national, settle, settled_task
from infra.db import FollowUpTask, Group, GroupArea, Supporter, SupporterScore
from schemas.events import postcode_district


class QueueItem(BaseModel):
    """A task as an organiser sees it: who (first name only), why, by when. The phone is
    there only on a task the organiser has claimed; no email, ever."""

    task_id: str
    supporter_id: str
    first_name: str | None
    kind: str
    reason: str
    due_at: datetime
    priority: str
    overdue: bool
    status: str
    district: str | None
    group_id: str | None = Field(description="The group it is routed to; None: national.")
    area: str | None
    rung: str | None
    score: float | None = Field(
        default=None, description="The supporter's newest stored engagement score."
    )
    claimed_by: str | None
    claimed_until: datetime | None
    attempts: int
    phone: str | None = None


class GroupRef(BaseModel):
    group_id: str
    name: str
    districts: list[str]


class QueueView(BaseModel):
    """An organiser's queue: open tasks of their groups' districts and their own claims,
    overdue first, then by due time and priority; and, when it is empty, why."""

    organiser_id: str
    groups: list[GroupRef]
    national: bool = Field(description="True: the national queue (districts nobody owns).")
    items: list[QueueItem]
    claimed_by_others: int
    empty_because: str | None


def queue(
    session: Session, who: Acting, now: datetime, *, national_queue: bool = False, limit: int = 200
) -> QueueView:
    """The organiser's queue as of ``now``; ``national_queue``: the tasks no group owns
    instead (admins only: Refused otherwise)."""
    if national_queue and not who.is_admin:
        raise Refused("the national queue is for admins")
    scope = national() if national_queue else _mine(who)
    _settle_scope(session, scope, now)
    rows = session.scalars(select(FollowUpTask).where(scope, FollowUpTask.status.in_(ACTIVE))).all()
    others = {t.task_id for t in rows if t.status == CLAIMED and t.claimed_by != who.organiser_id}
    shown = sorted(
        (t for t in rows if t.task_id not in others),
        key=lambda t: queue_order(t.due_at, t.priority, t.task_id, now),
    )[:limit]
    groups = [] if national_queue else _group_refs(session, who.group_ids)
    return QueueView(
        organiser_id=who.organiser_id,
        groups=groups,
        national=national_queue,
        items=_items(session, who, shown, now),
        claimed_by_others=len(others),
        empty_because=None if shown else _why_empty(groups, national_queue, len(others)),
    )


def _why_empty(groups: list[GroupRef], national_queue: bool, others: int) -> str:
    if not national_queue and not groups:
        return "you are not in any group yet: ask an admin to add you to one"
    if not national_queue and not any(g.districts for g in groups):
        return "no areas are assigned to your group yet: ask an admin to assign its districts"
    if others:
        return f"everything is claimed: {others} task(s) are with other organisers"
    return "nothing is due: no open follow-ups in your areas"


def escalations(session: Session, who: Acting, now: datetime) -> list[QueueItem]:
    """Overdue tasks (open or claimed) of the groups this organiser leads, most overdue first;
    an admin also sees the national queue's. Refused for someone who leads no group."""
    if not who.led_group_ids and not who.is_admin:
        raise Refused(f"organiser {who.organiser_id!r} leads no group")
    led = FollowUpTask.district.in_(districts_of(session, who.led_group_ids))
    scope = or_(led, national()) if who.is_admin else led
    _settle_scope(session, scope, now)
    rows = session.scalars(
        select(FollowUpTask)
        .where(scope, FollowUpTask.status.in_(ACTIVE), FollowUpTask.due_at < now)
        .order_by(FollowUpTask.due_at, FollowUpTask.task_id)
    ).all()
    return _items(session, who, rows, now)


class TaskDetail(BaseModel):
    item: QueueItem
    status_reason: str | None
    outcome: str | None
    history: list[dict[str, Any]]


def task_detail(session: Session, who: Acting, task_id: str, now: datetime) -> TaskDetail:
    """One task routed to the organiser, with its history; NotFound otherwise."""
    task = settled_task(session, who, task_id, now)
    (item,) = _items(session, who, [task], now)
    return TaskDetail(
        item=item,
        status_reason=task.status_reason,
        outcome=task.outcome,
        history=history(session, task_id),
    )


class Leader(BaseModel):
    supporter_id: str
    first_name: str | None
    district: str | None
    rung: str
    score: float
    as_of: datetime


class Leaders(BaseModel):
    """A group's leader candidates and leaders: supporters on those rungs (their newest
    stored score) whose postcode district the group owns."""

    group_id: str
    candidates: list[Leader]
    leaders: list[Leader]


def leaders(
    session: Session,
    who: Acting,
    group_id: str,
    *,
    candidate_rung: str = "leader_candidate",
    leader_rung: str = "leader",
) -> Leaders:
    """NotFound unless the organiser belongs to the group (or is an admin)."""
    if group_id not in who.group_ids and not who.is_admin:
        raise NotFound(f"no group {group_id!r}")
    if session.get(Group, group_id) is None:
        raise NotFound(f"no group {group_id!r}")
    owned = districts_of(session, [group_id])
    found: dict[str, list[Leader]] = {candidate_rung: [], leader_rung: []}
    if owned:
        rows = session.execute(
            select(SupporterScore, Supporter.first_name, Supporter.postcode)
            .join(Supporter, Supporter.supporter_id == SupporterScore.supporter_id)
            .where(
                SupporterScore.rung.in_(list(found)),
                or_(*(Supporter.postcode.like(f"{d} %") for d in owned)),
            )
            .order_by(SupporterScore.score.desc(), SupporterScore.supporter_id)
        ).all()
        for score, first_name, postcode in rows:
            found[score.rung].append(
                Leader(
                    supporter_id=score.supporter_id,
                    first_name=first_name,
                    district=postcode_district(postcode),
                    rung=score.rung,
                    score=score.score,
                    as_of=score.as_of,
                )
            )
    return Leaders(group_id=group_id, candidates=found[candidate_rung], leaders=found[leader_rung])


def supporter_visible(session: Session, who: Acting, supporter_id: str) -> str | None:
    """The supporter's district if their postcode district is one of the organiser's groups'
    (an admin: any supporter); NotFound otherwise."""
    row = session.get(Supporter, supporter_id)
    value = postcode_district(row.postcode) if row is not None else None
    if row is not None and (who.is_admin or value in districts_of(session, who.group_ids)):
        return value
    raise NotFound(f"no supporter {supporter_id!r}")


# --- helpers ----------------------------------------------------------------------------------


def _mine(who: Acting) -> Any:
    return FollowUpTask.district.in_(
        select(GroupArea.district).where(GroupArea.group_id.in_(who.group_ids))
    )


def _settle_scope(session: Session, scope: Any, now: datetime) -> None:
    ids = list(
        session.scalars(select(FollowUpTask.task_id).where(scope, FollowUpTask.status.in_(ACTIVE)))
    )
    settle(session, now, ids)


def _group_refs(session: Session, group_ids: Sequence[str]) -> list[GroupRef]:
    views = [group_view(session, g) for g in group_ids]
    return [GroupRef(group_id=v.group_id, name=v.name, districts=v.districts) for v in views]


def _items(
    session: Session, who: Acting, tasks: Sequence[FollowUpTask], now: datetime
) -> list[QueueItem]:
    sids = {t.supporter_id for t in tasks}
    people = {
        s.supporter_id: s
        for s in session.scalars(select(Supporter).where(Supporter.supporter_id.in_(sids)))
    }
    scores = {
        sid: (rung, score)
        for sid, rung, score in session.execute(
            select(SupporterScore.supporter_id, SupporterScore.rung, SupporterScore.score).where(
                SupporterScore.supporter_id.in_(sids)
            )
        )
    }
    districts = {t.district for t in tasks if t.district}
    owners = dict(
        session.execute(
            select(GroupArea.district, GroupArea.group_id).where(GroupArea.district.in_(districts))
        ).all()
    )
    items = []
    for t in tasks:
        person = people.get(t.supporter_id)
        mine = t.status == CLAIMED and t.claimed_by == who.organiser_id
        items.append(
            QueueItem(
                task_id=t.task_id,
                supporter_id=t.supporter_id,
                first_name=person.first_name if person else None,
                kind=t.kind,
                reason=t.reason,
                due_at=t.due_at,
                priority=t.priority,
                overdue=t.status in ACTIVE and t.due_at < now,
                status=t.status,
                district=t.district,
                group_id=owners.get(t.district) if t.district else None,
                area=t.area,
                rung=scores.get(t.supporter_id, (None, None))[0],
                score=scores.get(t.supporter_id, (None, None))[1],
                claimed_by=t.claimed_by,
                claimed_until=t.claimed_until,
                attempts=t.attempts,
                phone=person.phone if (mine and person) else None,
            )
        )
    return items
