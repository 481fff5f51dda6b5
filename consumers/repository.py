"""Nudge, task, consent, contact and score rows: the consumers' reads and idempotent writes."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, String, Table, bindparam, case, func, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from consumers.messages import OutgoingMessage
from consumers.organising.rules import holdout_reason
from consumers.organising.tasks import store_tasks as store_tasks  # the tasks' one writer
from infra.consent import newest_consents
from infra.db import (
    FollowUpTask,
    LedgerEvent,
    Nudge,
    OutboxMessage,
    Supporter,
    SupporterAlias,
    SupporterScore,
    dialect_insert,
    insert_ignoring_duplicates,
    survivor_of,
)
from infra.outbox import ledger_row
from schemas.events import (
    EngagementScored,
    MessageState,
    MessageStatus,
    NudgeRequested,
)

HELD_OUT = "held_out"
"""Status of a nudge or task whose supporter is in the rule's hold-out group: the decision is
recorded so the rule's lift can be measured, but the message is never sent (the dispatcher
only claims ``pending`` nudges) and the task is never in the organisers' queue."""
TASK_PRIORITIES = ("high", "normal", "low")
"""Most urgent first: the order of tasks due at the same time."""


def store_nudges(session: Session, nudges: Sequence[NudgeRequested]) -> int:
    """Record requested nudges as pending, or held out; a known idempotency key is ignored."""
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
                "status": HELD_OUT if n.holdout else "pending",
                "reason": holdout_reason(n.rule) if n.holdout else None,
                "requested_at": n.event_time,
            }
            for n in nudges
        ],
    )


def unstorable_score(score: EngagementScored) -> str | None:
    """Why a valid ``engagement.scored`` record cannot be stored, or None. A NaN score would
    break SQLite's NOT NULL and an over-long rung PostgreSQL's column, failing the whole batch
    again on every redelivery; the consumer dead-letters such a record instead."""
    if not math.isfinite(score.score):
        return f"score: not a finite number ({score.score})"
    rung_type = SupporterScore.__table__.c.rung.type
    limit = rung_type.length if isinstance(rung_type, String) else None
    if limit is not None and len(score.rung) > limit:
        return f"rung: longer than {limit} characters"
    return None


def store_scores(session: Session, scores: Sequence[EngagementScored]) -> int:
    """Keep the newest score per supporter by event time (``as_of``), in one statement.

    An older score arriving after a newer one changes nothing; at equal event times the later
    write wins (within ``scores``, the later in the sequence). Returns the rows written.
    """
    newest: dict[str, EngagementScored] = {}
    for score in scores:  # one row per key: PostgreSQL refuses to update a row twice
        kept = newest.get(score.supporter_id)
        if kept is None or score.event_time >= kept.event_time:
            newest[score.supporter_id] = score
    if not newest:
        return 0
    now = datetime.now(UTC)
    rows = [
        {
            "supporter_id": s.supporter_id,
            "score": s.score,
            "rung": s.rung,
            "as_of": s.event_time,
            "cause_event_id": s.cause_event_id,
            "updated_at": now,
        }
        for s in newest.values()
    ]
    statement = dialect_insert(session, SupporterScore)
    upsert = statement.on_conflict_do_update(
        index_elements=[SupporterScore.supporter_id],
        set_={
            name: statement.excluded[name]
            for name in ("score", "rung", "as_of", "cause_event_id", "updated_at")
        },
        where=statement.excluded.as_of >= SupporterScore.as_of,
    )
    return len(session.execute(upsert.returning(SupporterScore.supporter_id), rows).all())


def supporter_score(session: Session, supporter_id: str) -> dict[str, Any] | None:
    """One supporter's newest score and rung, or None when none has been stored."""
    row = session.get(SupporterScore, supporter_id)
    return None if row is None else _score_dict(row)


def top_scores(session: Session, limit: int) -> list[dict[str, Any]]:
    """The ``limit`` highest scores, highest first (ties by supporter id)."""
    rows = session.scalars(
        select(SupporterScore)
        .order_by(SupporterScore.score.desc(), SupporterScore.supporter_id)
        .limit(limit)
    )
    return [_score_dict(r) for r in rows]


def _score_dict(row: SupporterScore) -> dict[str, Any]:
    return {
        "supporter_id": row.supporter_id,
        "score": row.score,
        "rung": row.rung,
        "as_of": row.as_of.isoformat(),
        "cause_event_id": str(row.cause_event_id),
    }


DUE = ("pending", "held")
"""Statuses a sender may claim, once ``not_before`` (quiet hours, a retry's wait) has passed."""
IN_FLIGHT = ("sending", "ambiguous", "sent")
"""Statuses that count towards a cap: the message went, or may have gone."""


def due_nudges(
    session: Session, now: datetime, limit: int, nudge_ids: Sequence[str] | None = None
) -> list[Nudge]:
    """Pending or held nudges whose ``not_before`` has passed, oldest request first."""
    query = select(Nudge).where(
        Nudge.status.in_(DUE), or_(Nudge.not_before.is_(None), Nudge.not_before <= now)
    )
    if nudge_ids is not None:
        query = query.where(Nudge.nudge_id.in_(nudge_ids))
    return list(session.scalars(query.order_by(Nudge.created_at, Nudge.nudge_id).limit(limit)))


def pending_nudges(
    session: Session, limit: int, nudge_ids: Sequence[str] | None = None
) -> list[Nudge]:
    return due_nudges(session, datetime.now(UTC), limit, nudge_ids)


def claim_nudges(
    session: Session, nudge_ids: Sequence[str], now: datetime | None = None
) -> set[str]:
    """Move these nudges from pending (or held, once due) to sending, stamping the claim;
    return the ones this caller got. Two senders racing for one key: one row update wins."""
    if not nudge_ids:
        return set()
    now = now or datetime.now(UTC)
    return set(
        session.scalars(
            update(Nudge)
            .where(
                Nudge.nudge_id.in_(nudge_ids),
                Nudge.status.in_(DUE),
                or_(Nudge.not_before.is_(None), Nudge.not_before <= now),
            )
            .values(status="sending", sending_since=now, in_call=False)
            .returning(Nudge.nudge_id)
        )
    )


def lock_supporters(session: Session, supporter_ids: Sequence[str]) -> None:
    """Serialise senders per supporter before the caps are read: PostgreSQL row locks, in id
    order. SQLite's driver opens its transaction at the first write, so a read before it is
    outside any lock: a write that matches no row takes the database's write lock first."""
    if not supporter_ids:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(
            select(Supporter.supporter_id)
            .where(Supporter.supporter_id.in_(supporter_ids))
            .order_by(Supporter.supporter_id)
            .with_for_update()
        )
    elif dialect == "sqlite":
        session.execute(
            update(Supporter)
            .where(Supporter.supporter_id.is_(None))
            .values(supporter_id=Supporter.supporter_id)
        )


def renew_claim(session: Session, nudge_id: str, claimed_at: datetime, now: datetime) -> bool:
    """Restart a claim's lease just before its provider call (a batch may have waited on the
    rate limit); False when the claim made at ``claimed_at`` was lost meanwhile (expired, and
    perhaps claimed again by another sender, whose claim has another time)."""
    renewed = session.execute(
        update(Nudge)
        .where(
            Nudge.nudge_id == nudge_id,
            Nudge.status == "sending",
            Nudge.sending_since == claimed_at,
        )
        .values(sending_since=now, in_call=True)
        .returning(Nudge.nudge_id)
    ).first()
    return renewed is not None


def recent_sends(
    session: Session, pairs: Sequence[tuple[str, str]], since: datetime
) -> dict[tuple[str, str], list[datetime]]:
    """Per (supporter, channel): when messages went (or may have gone) since ``since``."""
    supporters = {supporter_id for supporter_id, _ in pairs}
    found: dict[tuple[str, str], list[datetime]] = {}
    if not supporters:
        return found
    rows = session.execute(
        select(Nudge.supporter_id, Nudge.channel, Nudge.sent_at, Nudge.sending_since).where(
            Nudge.supporter_id.in_(supporters),
            Nudge.status.in_(IN_FLIGHT),
            or_(Nudge.sent_at >= since, Nudge.sending_since >= since),
        )
    )
    for supporter_id, channel, sent_at, sending_since in rows:
        when = sent_at or sending_since
        if when is not None and when >= since:
            found.setdefault((supporter_id, channel), []).append(when)
    return found


def settle_nudge(
    session: Session,
    nudge_id: str,
    status: str,
    *,
    reason_code: str | None = None,
    reason: str | None = None,
    not_before: datetime | None = None,
    provider: str | None = None,
    provider_message_id: str | None = None,
    sent_at: datetime | None = None,
    attempts: int | None = None,
    opt_out_code: str | None = None,
    recipient: str | None = None,
    expect: Sequence[str] = ("sending",),
) -> bool:
    """Move a nudge on from one of the ``expect`` statuses; False when it was not in one (a
    reconciler or another sender got there first). A success is recorded from any unsettled
    status: the message went, whatever a reconciler thought meanwhile."""
    if status == "sent":
        expect = (*expect, "sending", "ambiguous", "pending", "held")
    values: dict[str, Any] = {
        "status": status,
        "reason_code": reason_code,
        "reason": reason[:500] if reason else None,
        "not_before": not_before,
    }
    optional = {
        "provider": provider,
        "provider_message_id": provider_message_id,
        "sent_at": sent_at,
        "attempts": attempts,
        "opt_out_code": opt_out_code,
        "recipient": recipient,
    }
    values.update({k: v for k, v in optional.items() if v is not None})
    # Synchronising the session costs more than the update itself; skipped when it holds no
    # copy of the nudge (the dispatcher's batches, settled while holding the write lock).
    loaded = identity_key(Nudge, nudge_id) in session.identity_map
    moved = session.execute(
        update(Nudge)
        .where(Nudge.nudge_id == nudge_id, Nudge.status.in_(set(expect)))
        .values(**values)
        .returning(Nudge.nudge_id)
        .execution_options(synchronize_session="auto" if loaded else False)
    ).first()
    return moved is not None


_NUDGES = cast(Table, Nudge.__table__)
_SETTLED = _NUDGES.c
_SETTLE_CLAIMED = (
    update(_NUDGES)
    .where(_SETTLED.nudge_id == bindparam("b_nudge_id"), _SETTLED.status == "sending")
    .values(
        status=bindparam("b_status"),
        reason_code=bindparam("b_reason_code"),
        reason=bindparam("b_reason"),
        not_before=bindparam("b_not_before"),
        sent_at=func.coalesce(
            bindparam("b_sent_at", type_=_SETTLED.sent_at.type), _SETTLED.sent_at
        ),
        opt_out_code=func.coalesce(bindparam("b_opt_out_code"), _SETTLED.opt_out_code),
        recipient=func.coalesce(bindparam("b_recipient"), _SETTLED.recipient),
    )
)


@dataclass(frozen=True)
class Settled:
    """A claimed nudge's outcome, for ``settle_claimed``; None leaves ``sent_at``,
    ``opt_out_code`` and ``recipient`` as they were (as ``settle_nudge`` does)."""

    nudge_id: str
    status: str
    reason_code: str | None = None
    reason: str | None = None
    not_before: datetime | None = None
    sent_at: datetime | None = None
    opt_out_code: str | None = None
    recipient: str | None = None


def settle_claimed(session: Session, settled: Sequence[Settled]) -> None:
    """Settle nudges this transaction claimed (``claim_nudges``), all in one statement run
    for many rows: ``settle_nudge``'s writes without a round trip per nudge. Every one is
    still 'sending', as its claim holds the write lock (SQLite) or the row's lock (PostgreSQL)
    until the commit; a row that was not is an error, and nothing of the batch is kept."""
    if not settled:
        return
    result = session.execute(
        _SETTLE_CLAIMED,
        [
            {
                "b_nudge_id": s.nudge_id,
                "b_status": s.status,
                "b_reason_code": s.reason_code,
                "b_reason": s.reason[:500] if s.reason else None,
                "b_not_before": s.not_before,
                "b_sent_at": s.sent_at,
                "b_opt_out_code": s.opt_out_code,
                "b_recipient": s.recipient,
            }
            for s in settled
        ],
    )
    moved = cast(CursorResult[Any], result).rowcount
    if moved != len(settled):
        raise RuntimeError(f"{len(settled) - moved} claimed nudges were no longer 'sending'")


def survivors_of(session: Session, supporter_ids: Sequence[str]) -> dict[str, str]:
    """The id each supporter id stands for now (``infra.db.survivor_of``, for many at once)."""
    found = {sid: sid for sid in supporter_ids}
    wanted = sorted(found)
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        found.update(
            session.execute(
                select(SupporterAlias.absorbed_id, SupporterAlias.survivor_id).where(
                    SupporterAlias.absorbed_id.in_(chunk)
                )
            ).all()
        )
    return found


_EXPIRED = {
    False: (
        "pending",
        "claim_expired",
        "claimed, but the sender stopped before calling the provider",
    ),
    True: ("ambiguous", "lease_expired", "the sender stopped during the provider call"),
}
"""What an expired claim becomes, by whether its provider call had begun (``in_call``)."""


def expire_claims(session: Session, claimed_before: datetime) -> tuple[list[Nudge], int]:
    """Claims made before ``claimed_before`` and never settled: the sender died. Those whose
    provider call had begun are ambiguous now, as nobody knows whether the provider took them
    (returned, with their new reason); those never called are simply pending again (counted):
    a crash mid-batch does not make the rest of the batch wait for a lookup."""
    moved: dict[bool, list[str]] = {}
    for in_call, (status, code, reason) in _EXPIRED.items():
        moved[in_call] = list(
            session.scalars(
                update(Nudge)
                .where(
                    Nudge.status == "sending",
                    Nudge.sending_since < claimed_before,
                    Nudge.in_call.is_(in_call),
                )
                .values(status=status, reason_code=code, reason=reason)
                .returning(Nudge.nudge_id)
            )
        )
    ids = moved[True]
    expired = list(session.scalars(select(Nudge).where(Nudge.nudge_id.in_(ids)))) if ids else []
    return expired, len(moved[False])


def nudges_to_reconcile(session: Session, sent_before: datetime, limit: int) -> list[Nudge]:
    """Ambiguous nudges sent before ``sent_before``: time for the provider to show them."""
    return list(
        session.scalars(
            select(Nudge)
            .where(Nudge.status == "ambiguous", Nudge.sending_since < sent_before)
            .order_by(Nudge.sending_since)
            .limit(limit)
        )
    )


def consented(session: Session, wanted: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which (supporter_id, channel) pairs have a newest consent record that grants."""
    latest = newest_consents(session, {supporter_id for supporter_id, _ in wanted})
    return {pair for pair in wanted if (row := latest.get(pair)) is not None and row.granted}


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


def write_outbox(session: Session, message: OutgoingMessage, created_at: datetime) -> None:
    session.add(
        OutboxMessage(
            nudge_id=message.nudge_id,
            channel=message.channel,
            to_address=message.to,
            subject=message.subject,
            body=message.body,
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


def list_tasks(session: Session, limit: int, status: str | None = "open") -> list[dict[str, Any]]:
    """Every group's tasks with this status (None: any, held-out ones included), soonest
    due first, then by priority (high first): `engage tasks`. An organiser's own queue, routed
    by district, is ``consumers.organising.queue.queue``."""
    rank = case(
        {p: n for n, p in enumerate(TASK_PRIORITIES)},
        value=FollowUpTask.priority,
        else_=len(TASK_PRIORITIES),
    )
    query = select(FollowUpTask)
    if status is not None:
        query = query.where(FollowUpTask.status == status)
    rows = session.scalars(
        query.order_by(FollowUpTask.due_at, rank, FollowUpTask.task_id).limit(limit)
    )
    return [
        {
            "task_id": r.task_id,
            "supporter_id": r.supporter_id,
            "kind": r.kind,
            "reason": r.reason,
            "due_at": r.due_at.isoformat(),
            "area": r.area,
            "district": r.district,
            "status": r.status,
            "priority": r.priority,
            "rule": r.rule,
        }
        for r in rows
    ]


def list_nudges(
    session: Session, limit: int, statuses: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Nudges, newest first, with what became of each and why."""
    query = select(Nudge)
    if statuses:
        query = query.where(Nudge.status.in_(statuses))
    rows = session.scalars(query.order_by(Nudge.updated_at.desc(), Nudge.nudge_id).limit(limit))
    return [
        {
            "nudge_id": r.nudge_id,
            "supporter_id": r.supporter_id,
            "channel": r.channel,
            "rule": r.rule,
            "status": r.status,
            "reason_code": r.reason_code,
            "reason": r.reason,
            "not_before": r.not_before.isoformat() if r.not_before else None,
            "attempts": r.attempts,
            "sent_at": r.sent_at.isoformat() if r.sent_at else None,
            "delivery_status": r.delivery_status,
        }
        for r in rows
    ]


_RESOLUTIONS = {
    "resend": ("pending", ("ambiguous", "failed"), "operator_resend", "a person chose to resend"),
    "mark-sent": ("sent", ("ambiguous",), "operator_confirmed", "a person confirmed it went"),
    "give-up": ("failed", ("ambiguous",), "operator_gave_up", "a person chose not to resend"),
}


def resolve_nudge(session: Session, nudge_id: str, action: str) -> str:
    """A person settles an ambiguous (or failed) nudge: resend, mark-sent or give-up."""
    status, allowed, code, reason = _RESOLUTIONS[action]
    nudge = session.get(Nudge, nudge_id)
    if nudge is None:
        return f"no nudge {nudge_id}"
    if nudge.status not in allowed:
        return f"nudge {nudge_id} is {nudge.status}; {action} needs {' or '.join(allowed)}"
    now = datetime.now(UTC)
    settle_nudge(
        session,
        nudge_id,
        status,
        reason_code=code,
        reason=reason,
        sent_at=now if status == "sent" else None,
        expect=allowed,
    )
    if status != "pending":
        session.add(
            status_row(session, nudge, "sent" if status == "sent" else "failed", now, code, reason)
        )
    return f"ok: nudge {nudge_id} is {status} now"


_STATUS_NAMESPACE = uuid.UUID("0c3e8f6a-5b0e-4a8e-9f57-2f4b4e1d7a21")


def message_status(
    session: Session,
    nudge: Nudge,
    state: MessageState,
    at: datetime,
    *,
    cause: str,
    reason_code: str | None = None,
    reason: str | None = None,
    provider: str | None = None,
    provider_message_id: str | None = None,
    error_code: str | None = None,
    survivor: str | None = None,
) -> MessageStatus:
    """The one builder of a nudge's ``message.status`` event, for the sender and the webhooks
    alike: its id derived from the nudge and ``cause`` (what reported it: the same report
    applied twice gets the same id, so the ledger keeps it once), its supporter the one the
    nudge's supporter stands for now (after merges; ``survivor`` when the caller read it)."""
    return MessageStatus(
        event_id=uuid.uuid5(_STATUS_NAMESPACE, f"{nudge.nudge_id}:{cause}"),
        event_time=at,
        nudge_id=nudge.nudge_id,
        supporter_id=survivor or survivor_of(session, nudge.supporter_id),
        channel="sms" if nudge.channel == "sms" else "email",
        rule=nudge.rule,
        status=state,
        reason_code=reason_code,
        reason=reason[:500] if reason else None,
        provider=provider,
        provider_message_id=provider_message_id,
        error_code=error_code,
    )


def status_row(
    session: Session,
    nudge: Nudge,
    status: MessageState,
    now: datetime,
    reason_code: str | None = None,
    reason: str | None = None,
    provider: str | None = None,
    provider_message_id: str | None = None,
    error_code: str | None = None,
    survivor: str | None = None,
) -> LedgerEvent:
    """The ledger row of a decision the sender took about a nudge, for the caller's
    transaction: caused by that decision (status, reason, attempt, moment)."""
    cause = f"sender:{status}:{reason_code}:{nudge.attempts}:{now.isoformat()}"
    event = message_status(
        session,
        nudge,
        status,
        now,
        cause=cause,
        reason_code=reason_code,
        reason=reason,
        provider=provider,
        provider_message_id=provider_message_id,
        error_code=error_code,
        survivor=survivor,
    )
    return ledger_row(event, now)


class Nudges:
    """What the provider webhooks may read and change of a nudge, so that this module stays
    the only writer of the ``nudges`` table (the webhooks receive an instance from engage/)."""

    @staticmethod
    def by_sms_message(session: Session, message_sid: str) -> Nudge | None:
        """The text Twilio reports on, by its message sid (not one sent by another provider)."""
        return session.scalars(
            select(Nudge)
            .where(
                Nudge.provider_message_id == message_sid,
                Nudge.channel == "sms",
                or_(Nudge.provider.is_(None), Nudge.provider == "twilio"),
            )
            .order_by(Nudge.nudge_id)
            .limit(1)
        ).first()

    @staticmethod
    def email(session: Session, nudge_id: str | None, message_id: str | None) -> Nudge | None:
        """The email SendGrid reports on: by the ``nudge_id`` our sender adds, else by the
        X-Message-Id its ``sg_message_id`` starts with; not one sent by another provider."""
        nudge: Nudge | None = None
        if nudge_id is not None:
            nudge = session.get(Nudge, nudge_id)
        elif message_id is not None:
            nudge = session.scalars(
                select(Nudge)
                .where(Nudge.provider_message_id == message_id, Nudge.channel == "email")
                .order_by(Nudge.nudge_id)
                .limit(1)
            ).first()
        if nudge is None or nudge.channel != "email" or nudge.provider not in (None, "sendgrid"):
            return None
        return nudge

    @staticmethod
    def set_delivery(session: Session, nudge: Nudge, status: str, at: datetime) -> None:
        """Record the provider's newest delivery status (the caller has checked it moves on)."""
        nudge.delivery_status, nudge.delivery_updated_at = status, at

    @staticmethod
    def confirm_sent(
        session: Session,
        nudge: Nudge,
        provider: str,
        provider_message_id: str | None,
        at: datetime,
        reason: str,
    ) -> bool:
        """An ambiguous send the provider has since reported on: it went. False (and nothing
        changed) when the nudge is not ambiguous."""
        if nudge.status != "ambiguous":
            return False
        nudge.status, nudge.reason_code, nudge.reason = "sent", "confirmed", reason[:500]
        nudge.provider, nudge.sent_at = provider, at
        if provider_message_id is not None and nudge.provider_message_id is None:
            nudge.provider_message_id = provider_message_id[:200]
        return True

    message_status = staticmethod(message_status)


def stored_outputs(session: Session) -> tuple[dict[str, tuple[float, str]], set[str], set[str]]:
    """Every stored (score, rung) by supporter, and every nudge's and task's key: what
    `engage replay` compares a fold of the whole log with."""
    scores = {
        sid: (score, rung)
        for sid, score, rung in session.execute(
            select(SupporterScore.supporter_id, SupporterScore.score, SupporterScore.rung)
        )
    }
    nudge_ids = set(session.scalars(select(Nudge.nudge_id)))
    task_ids = set(session.scalars(select(FollowUpTask.task_id)))
    return scores, nudge_ids, task_ids
