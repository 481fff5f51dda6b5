"""The mart's one writer: idempotent upserts of analytics records, erasure, emptying.

Every write is keyed (the source event id, the nudge id, the task id, the person and day), and
where two records compete for a row the newer event time wins, ties broken by value, so the
order records arrive in does not change the result: a rebuild from the topics equals the mart
kept record by record.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.orm import Session

from infra.db import (
    MartErasure,
    MartEvent,
    MartMessage,
    MartSupporterDay,
    MartTask,
    dialect_insert,
    insert_ignoring_duplicates,
)
from schemas.events import (
    AnalyticsAction,
    AnalyticsErased,
    AnalyticsMessage,
    AnalyticsNudge,
    AnalyticsRecord,
    AnalyticsScore,
    AnalyticsTask,
)

MART_TABLES = (MartEvent, MartSupporterDay, MartMessage, MartTask)
"""The tables analysts read and export (``mart_erasures`` is the sink's own bookkeeping)."""


def week_of(day: date) -> date:
    """The Monday of ``day``'s ISO week: the mart's weeks start on Mondays (UTC)."""
    return day - timedelta(days=day.weekday())


def utc_day(at: datetime) -> date:
    return at.astimezone(UTC).date()


@dataclass
class MartBatch:
    """Records to store, by kind (any order, repeats welcome)."""

    actions: list[AnalyticsAction] = field(default_factory=list)
    scores: list[AnalyticsScore] = field(default_factory=list)
    nudges: list[AnalyticsNudge] = field(default_factory=list)
    messages: list[AnalyticsMessage] = field(default_factory=list)
    tasks: list[AnalyticsTask] = field(default_factory=list)
    erasures: list[AnalyticsErased] = field(default_factory=list)

    def add(self, record: AnalyticsRecord) -> None:
        if isinstance(record, AnalyticsAction):
            self.actions.append(record)
        elif isinstance(record, AnalyticsScore):
            self.scores.append(record)
        elif isinstance(record, AnalyticsNudge):
            self.nudges.append(record)
        elif isinstance(record, AnalyticsMessage):
            self.messages.append(record)
        elif isinstance(record, AnalyticsTask):
            self.tasks.append(record)
        elif isinstance(record, AnalyticsErased):
            self.erasures.append(record)
        else:  # a new analytics topic the mart does not know yet is a bug here, not bad input
            raise TypeError(f"the mart does not store {type(record).__name__}")

    def __len__(self) -> int:
        return sum(
            len(part)
            for part in (
                self.actions,
                self.scores,
                self.nudges,
                self.messages,
                self.tasks,
                self.erasures,
            )
        )


def store_batch(session: Session, batch: MartBatch) -> dict[str, int]:
    """Store ``batch`` in the caller's transaction: erasures first (a person erased is deleted
    from every table and nothing of theirs is kept afterwards, whichever record came first),
    then the rest. Returns rows written (inserted or changed) per table."""
    written = {"mart_erasures": erase_people(session, batch.erasures)}
    people = {
        r.person
        for part in (batch.actions, batch.scores, batch.nudges, batch.messages, batch.tasks)
        for r in part
    }
    erased = _erased(session, people)

    def kept(records: Iterable[Any]) -> list[Any]:
        return [r for r in records if r.person not in erased]

    actions = kept(batch.actions)
    written["mart_events"] = _store_events(session, actions)
    written["mart_supporter_days"] = _store_days(session, kept(batch.scores))
    written["mart_messages"] = _store_nudges(session, kept(batch.nudges)) + _store_statuses(
        session, kept(batch.messages)
    )
    written["mart_tasks"] = _store_tasks(session, kept(batch.tasks)) + _store_outcomes(
        session, [a for a in actions if a.type == "task.outcome" and a.task_id]
    )
    return written


def erase_people(session: Session, erasures: Sequence[AnalyticsErased]) -> int:
    """Delete every mart row of each erased person and remember the pseudonym (only it) so
    that a record of theirs arriving later is not kept. Returns the people newly erased."""
    people = sorted({e.person for e in erasures})
    if not people:
        return 0
    for model in MART_TABLES:
        session.execute(delete(model).where(model.person.in_(people)))
    when = {e.person: e.event_time for e in erasures}
    return insert_ignoring_duplicates(
        session, MartErasure, [{"person": p, "erased_at": when[p]} for p in people]
    )


def empty_mart(session: Session) -> None:
    """Delete every row of the mart's tables and its erasures (before a rebuild)."""
    for model in (*MART_TABLES, MartErasure):
        session.execute(delete(model))


def _erased(session: Session, people: set[str]) -> set[str]:
    if not people:
        return set()
    found: set[str] = set()
    ordered = sorted(people)
    for start in range(0, len(ordered), 500):
        chunk = ordered[start : start + 500]
        found.update(
            session.scalars(select(MartErasure.person).where(MartErasure.person.in_(chunk)))
        )
    return found


def _store_events(session: Session, actions: Sequence[AnalyticsAction]) -> int:
    return insert_ignoring_duplicates(
        session,
        MartEvent,
        [
            {
                "event_id": a.event_id,
                "person": a.person,
                "key_id": a.key_id,
                "type": a.type,
                "event_time": a.event_time,
                "day": utc_day(a.event_time),
                "week": week_of(utc_day(a.event_time)),
                "district": a.district,
                "area": a.area,
                "source": a.source,
                "petition_id": a.petition_id,
                "meeting_id": a.meeting_id,
                "role": a.role,
                "training": a.training,
                "task_id": a.task_id,
                "outcome": a.outcome,
                "commitment": a.commitment,
                "channel": a.channel,
                "granted": a.granted,
            }
            for a in {a.event_id: a for a in actions}.values()
        ],
    )


def _upsert(
    session: Session,
    model: Any,
    rows: list[dict[str, Any]],
    keys: Sequence[str],
    columns: Sequence[str],
    newer: Any = None,
) -> int:
    """INSERT ... ON CONFLICT (keys) DO UPDATE SET columns [WHERE newer(excluded)]; returns the
    rows inserted or changed. ``rows`` must hold one row per key (PostgreSQL refuses to
    change a row twice in one statement)."""
    if not rows:
        return 0
    statement = dialect_insert(session, model)
    upsert = statement.on_conflict_do_update(
        index_elements=[getattr(model, k) for k in keys],
        set_={name: statement.excluded[name] for name in columns},
        where=None if newer is None else newer(statement.excluded),
    )
    primary = [getattr(model, k) for k in keys]
    return len(session.execute(upsert.returning(*primary), rows).all())


def _newest(records: Iterable[Any], key: Any, rank: Any) -> list[Any]:
    """One record per ``key(record)``: the greatest ``rank(record)``."""
    best: dict[Any, Any] = {}
    for record in records:
        k = key(record)
        if k not in best or rank(record) > rank(best[k]):
            best[k] = record
    return list(best.values())


def _store_days(session: Session, scores: Sequence[AnalyticsScore]) -> int:
    """Each person's last score of each day (by event time; at equal times the higher score)."""
    newest = _newest(
        scores, lambda s: (s.person, utc_day(s.event_time)), lambda s: (s.event_time, s.score)
    )
    rows = [
        {
            "person": s.person,
            "day": utc_day(s.event_time),
            "week": week_of(utc_day(s.event_time)),
            "rung": s.rung,
            "score": s.score,
            "as_of": s.event_time,
        }
        for s in newest
    ]
    t = MartSupporterDay
    return _upsert(
        session,
        t,
        rows,
        ("person", "day"),
        ("rung", "score", "as_of"),
        lambda x: or_(x.as_of > t.as_of, and_(x.as_of == t.as_of, x.score > t.score)),
    )


_NUDGE_COLUMNS = ("rule", "channel", "template", "holdout", "requested_at", "requested_week")


def _store_nudges(session: Session, nudges: Sequence[AnalyticsNudge]) -> int:
    rows = [
        {
            "nudge_id": n.nudge_id,
            "person": n.person,
            "rule": n.rule,
            "channel": n.channel,
            "template": n.template,
            "holdout": n.holdout,
            "requested_at": n.event_time,
            "requested_week": week_of(utc_day(n.event_time)),
        }
        for n in _newest(nudges, lambda n: n.nudge_id, lambda n: (-n.event_time.timestamp(),))
    ]
    t = MartMessage
    return _upsert(
        session,
        t,
        rows,
        ("nudge_id",),
        _NUDGE_COLUMNS,
        lambda x: or_(t.requested_at.is_(None), x.requested_at < t.requested_at),
    )


def _store_statuses(session: Session, messages: Sequence[AnalyticsMessage]) -> int:
    """The newest status of each nudge (at equal times, the greater status name: arbitrary,
    but the same whatever the order of arrival)."""
    rows = [
        {
            "nudge_id": m.nudge_id,
            "person": m.person,
            "channel": m.channel,
            "status": m.status,
            "reason_code": m.reason_code,
            "status_at": m.event_time,
        }
        for m in _newest(messages, lambda m: m.nudge_id, lambda m: (m.event_time, m.status))
    ]
    t = MartMessage
    return _upsert(
        session,
        t,
        rows,
        ("nudge_id",),
        ("status", "reason_code", "status_at"),
        lambda x: or_(
            t.status_at.is_(None),
            x.status_at > t.status_at,
            and_(x.status_at == t.status_at, x.status > t.status),
        ),
    )


_TASK_COLUMNS = ("kind", "rule", "priority", "holdout", "area", "created_at", "created_week")


def _store_tasks(session: Session, tasks: Sequence[AnalyticsTask]) -> int:
    rows = [
        {
            "task_id": k.task_id,
            "person": k.person,
            "kind": k.kind,
            "rule": k.rule,
            "priority": k.priority,
            "holdout": k.holdout,
            "area": k.area,
            "created_at": k.event_time,
            "created_week": week_of(utc_day(k.event_time)),
            "due_at": k.due_at,
        }
        for k in _newest(tasks, lambda k: k.task_id, lambda k: (k.event_time,))
    ]
    t = MartTask
    return _upsert(
        session,
        t,
        rows,
        ("task_id",),
        (*_TASK_COLUMNS, "due_at"),
        lambda x: or_(t.created_at.is_(None), x.created_at > t.created_at),
    )


def _store_outcomes(session: Session, outcomes: Sequence[AnalyticsAction]) -> int:
    """A task's newest outcome (an organiser may record no answer, then reached); at equal
    times the greater outcome name, whatever the order of arrival."""
    rows = [
        {
            "task_id": o.task_id,
            "person": o.person,
            "outcome": o.outcome,
            "commitment": o.commitment,
            "outcome_at": o.event_time,
        }
        for o in _newest(outcomes, lambda o: o.task_id, lambda o: (o.event_time, o.outcome or ""))
    ]
    t = MartTask
    return _upsert(
        session,
        t,
        rows,
        ("task_id",),
        ("outcome", "commitment", "outcome_at"),
        lambda x: or_(
            t.outcome_at.is_(None),
            x.outcome_at > t.outcome_at,
            and_(
                x.outcome_at == t.outcome_at,
                func.coalesce(x.outcome, "") > func.coalesce(t.outcome, ""),
            ),
        ),
    )
