"""The operations a web page, a JSON endpoint or the `engage queue` command call: each takes the
caller's session, the acting organiser and ``now``, with the settings and the ledger's append
function bound once by ``engage/``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from consumers.organising import queue as reads
from consumers.organising import tasks
from consumers.organising.directory import acting
from consumers.organising.outcomes import (
    AppendEvents,
    OutcomeResult,
    TrainingResult,
    record_outcome,
    record_training,
)
from consumers.organising.queue import Leaders, QueueItem, QueueView, TaskDetail
from consumers.organising.rules import Acting
from schemas.events import Commitment, OutcomeKind


@dataclass(frozen=True)
class FollowUps:
    """The queue's operations with their settings: how long a claim lasts, the identity key
    (which keys the suppression list), and the ledger's append function."""

    claim_for: timedelta
    identity_key: str
    append: AppendEvents

    def organiser(self, session: Session, organiser_id: str) -> Acting:
        """NotFound for nobody, Refused for a disabled organiser."""
        return acting(session, organiser_id)

    def queue(
        self, session: Session, who: Acting, now: datetime, *, national: bool = False
    ) -> QueueView:
        return reads.queue(session, who, now, national_queue=national)

    def task(self, session: Session, who: Acting, task_id: str, now: datetime) -> TaskDetail:
        return reads.task_detail(session, who, task_id, now)

    def claim(self, session: Session, who: Acting, task_id: str, now: datetime) -> TaskDetail:
        tasks.claim(session, who, task_id, now, self.claim_for)
        return reads.task_detail(session, who, task_id, now)

    def release(self, session: Session, who: Acting, task_id: str, now: datetime) -> TaskDetail:
        tasks.release(session, who, task_id, now)
        return reads.task_detail(session, who, task_id, now)

    def record_outcome(
        self,
        session: Session,
        who: Acting,
        task_id: str,
        outcome: OutcomeKind,
        now: datetime,
        *,
        commitment: Commitment | None = None,
        note: str | None = None,
    ) -> OutcomeResult:
        return record_outcome(
            session,
            who,
            task_id,
            outcome,
            now,
            append=self.append,
            identity_key=self.identity_key,
            commitment=commitment,
            note=note,
        )

    def escalations(self, session: Session, who: Acting, now: datetime) -> list[QueueItem]:
        return reads.escalations(session, who, now)

    def leaders(self, session: Session, who: Acting, group_id: str) -> Leaders:
        return reads.leaders(session, who, group_id)

    def record_training(
        self,
        session: Session,
        who: Acting,
        supporter_id: str,
        training: str,
        at: datetime,
        now: datetime,
    ) -> TrainingResult:
        return record_training(session, who, supporter_id, training, at, now, append=self.append)
