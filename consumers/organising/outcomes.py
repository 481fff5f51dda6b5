"""Outcomes that feed back: what an organiser records completes (or reopens) the task and goes
onto the log as ``task.outcome`` through the ingest ledger, in the caller's transaction, with
its effects on consent and the suppression list; and a training a supporter completed goes
onto the log as ``training.completed``.

The ledger belongs to ``producers/``: this module gets its ``append`` function (the ledger's
``record_events``) as a parameter from ``engage/``, so that a consent withdrawal is recorded
exactly as any other ``consent.changed`` is. Suppressions go through ``infra.consent``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from consumers.organising.queue import supporter_visible
from consumers.organising.rules import Acting
from consumers.organising.tasks import cancel_supporter_tasks, complete
from infra.consent import contact_key, suppress_contact
from infra.db import Nudge, Supporter, survivor_of
from schemas.events import (
    Commitment,
    ConsentChanged,
    Event,
    OutcomeKind,
    TaskOutcome,
    TrainingCompleted,
)

_NAMESPACE = uuid.UUID("3b8f0f5e-6c1d-4a57-9e0b-5f2d8c7a1e44")
SOURCE = "organiser"
"""The ``source`` of a consent withdrawn, and of a suppression, by an organiser's outcome."""


class AppendEvents(Protocol):
    """Adds events to the ingest ledger in the caller's transaction (their consent records
    too); ``producers.ledger.record_events``, handed in by ``engage/``."""

    def __call__(
        self, session: Session, events: Sequence[Event], accepted_at: datetime, /
    ) -> tuple[list[uuid.UUID], list[uuid.UUID]]: ...


class OutcomeResult(BaseModel):
    task_id: str
    supporter_id: str
    outcome: OutcomeKind
    commitment: Commitment | None
    status: str
    """The task's state after it: done, or open again (a first no-answer)."""
    reopened: bool
    due_at: datetime
    event_ids: list[uuid.UUID]
    """Events added to the ledger: the task.outcome, then any consent.changed."""
    suppressed: list[str]
    """Channels on which addresses were suppressed ("email", "sms")."""
    cancelled_tasks: list[str]
    """The supporter's other open tasks, cancelled by a do-not-contact."""


def record_outcome(
    session: Session,
    who: Acting,
    task_id: str,
    outcome: OutcomeKind,
    now: datetime,
    *,
    append: AppendEvents,
    identity_key: str,
    commitment: Commitment | None = None,
    note: str | None = None,
) -> OutcomeResult:
    """Record how a follow-up went, all in the caller's transaction, so every effect has
    happened when it commits:

    - the task is done, or reopened due a day later after a first no-answer;
    - ``task.outcome`` is added to the ledger (a commitment scores through the playbook);
    - do_not_contact: consent withdrawn on email and SMS (``consent.changed`` events, whose
      consent records the ledger writes), every address of theirs suppressed on its
      channel, and their other open tasks cancelled;
    - wrong_number: their phone suppressed for SMS, so the sender never texts it.

    The note stays in the task's history, off the log. ValueError for an invalid outcome;
    NotFound for a task not routed to the organiser; Conflict for one not open to them.
    """
    done = complete(session, who, task_id, outcome, commitment, note, now)
    sid = survivor_of(session, done.supporter_id)
    events: list[Event] = [
        TaskOutcome(
            event_id=_event_id(task_id, done.attempt, "outcome"),
            event_time=now,
            supporter_id=sid,
            task_id=task_id,
            outcome=outcome,
            commitment=commitment,
        )
    ]
    suppressed: list[str] = []
    cancelled: list[str] = []
    if outcome == "do_not_contact":
        for channel in ("email", "sms"):
            events.append(
                ConsentChanged(
                    event_id=_event_id(task_id, done.attempt, f"consent:{channel}"),
                    event_time=now,
                    supporter_id=sid,
                    channel=channel,
                    granted=False,
                    source=SOURCE,
                )
            )
        for channel, key in _addresses(session, identity_key, sid):
            suppress_contact(session, channel, key, "do not contact (organiser)", SOURCE, now)
            suppressed.append(channel)
        cancelled = cancel_supporter_tasks(
            session, [sid], now, who.organiser_id, "do not contact (organiser)"
        )
    elif outcome == "wrong_number":
        phone = session.scalar(select(Supporter.phone).where(Supporter.supporter_id == sid))
        if phone:
            key = contact_key(identity_key, "sms", phone)
            suppress_contact(session, "sms", key, "wrong number (organiser)", SOURCE, now)
            suppressed.append("sms")
    append(session, events, now)
    return OutcomeResult(
        task_id=task_id,
        supporter_id=sid,
        outcome=outcome,
        commitment=commitment,
        status=done.status,
        reopened=done.reopened,
        due_at=done.due_at,
        event_ids=[e.event_id for e in events],
        suppressed=sorted(set(suppressed)),
        cancelled_tasks=cancelled,
    )


def _addresses(session: Session, identity_key: str, sid: str) -> list[tuple[str, str]]:
    """(channel, contact key) of the supporter's email and phone, and of every address a
    nudge of theirs went to."""
    keys: set[tuple[str, str]] = set()
    row = session.get(Supporter, sid)
    if row is not None and row.email:
        keys.add(("email", contact_key(identity_key, "email", row.email)))
    if row is not None and row.phone:
        keys.add(("sms", contact_key(identity_key, "sms", row.phone)))
    sent = session.execute(
        select(Nudge.channel, Nudge.recipient).where(
            Nudge.supporter_id == sid, Nudge.recipient.is_not(None)
        )
    )
    keys.update((channel, recipient) for channel, recipient in sent if recipient)
    return sorted(keys)


def _event_id(task_id: str, attempt: int, what: str) -> uuid.UUID:
    """The same outcome recorded twice (a retried request) gets the same id: the ledger
    refuses the second."""
    return uuid.uuid5(_NAMESPACE, f"{task_id}:{attempt}:{what}")


class TrainingResult(BaseModel):
    supporter_id: str
    event_id: uuid.UUID
    new: bool
    """False: the same training on the same day was recorded before (nothing changed)."""


def record_training(
    session: Session,
    who: Acting,
    supporter_id: str,
    training: str,
    at: datetime,
    now: datetime,
    *,
    append: AppendEvents,
) -> TrainingResult:
    """Record that a supporter of the organiser's areas completed a training at ``at``: a
    ``training.completed`` event on the ledger, which the playbook scores and which lifts a
    leader candidate to the ``leader`` rung. The same training on the same day is recorded
    once. NotFound for a supporter outside the organiser's areas (admins: anyone); ValueError
    for a blank name or a time after ``now``."""
    name = training.strip()
    if not name or len(name) > 200:
        raise ValueError("training: a name of 1 to 200 characters")
    if at > now:
        raise ValueError("at: in the future")
    supporter_visible(session, who, supporter_id)
    sid = survivor_of(session, supporter_id)
    event = TrainingCompleted(
        event_id=uuid.uuid5(_NAMESPACE, f"training:{sid}:{name.lower()}:{at.date()}"),
        event_time=at,
        supporter_id=sid,
        training=name,
    )
    accepted, _ = append(session, [event], now)
    return TrainingResult(supporter_id=sid, event_id=event.event_id, new=bool(accepted))
