"""The people the erasure and access-request tests hold: Jo (an email, and a phone first seen
alone, then merged into Jo by an RSVP giving both) and Sam, posted through the ingest API, with
the ids the ingest gave them read back; and the consumers' rows both tests give them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from infra.consent import contact_key
from infra.db import Nudge, OutboxMessage
from schemas.events import EngagementScored, TaskCreated
from tests.factories import absorbed_into, id_of
from tests.integration.test_ingest_api import KEY, WHEN, outcome, petition, rsvp, signup

JO = "jo.bloggs@example.org"
JO_PHONE = "+447911123456"
JO_PHONE_TYPED = "07911 123456"
SAM = "sam.other@example.org"
SAM_PHONE = "+447911123457"


@dataclass(frozen=True)
class People:
    """The ids the ingest gave them."""

    jo: str
    jo_phone: str
    """The id Jo's phone was given when first seen alone, merged into ``jo`` since."""
    sam: str


def post_people(
    client: httpx.Client,
    sessions: sessionmaker[Session],
    *,
    jo: dict[str, Any] | None = None,
    sam: dict[str, Any] | None = None,
) -> People:
    """One batch: Jo's signup by email, a petition by Jo's phone alone (a person of its own),
    an RSVP giving both (the phone's id merged into Jo's), and Sam's signup. ``jo`` and
    ``sam``: fields of their signups."""
    posted = [
        signup(**(jo or {})),
        petition(phone=JO_PHONE_TYPED),
        rsvp(email=JO, phone=JO_PHONE_TYPED, meeting_id="m-1"),
        signup(email=SAM, **(sam or {})),
    ]
    answer = client.post("/v1/events/batch", json={"events": posted})
    assert answer.status_code == 202, answer.text
    jo_id = id_of(sessions, KEY, email=JO)
    assert id_of(sessions, KEY, phone=JO_PHONE) == jo_id  # the link moved with the merge
    with sessions() as session:
        (phone_id,) = absorbed_into(session, jo_id)
    sam_id = id_of(sessions, KEY, email=SAM)
    assert len({jo_id, phone_id, sam_id}) == 3
    return People(jo=jo_id, jo_phone=phone_id, sam=sam_id)


def follow_up_tasks(people: People) -> list[TaskCreated]:
    """A call about Jo (``call-new-signer:<id>``, as the outcome names it) and one about Sam."""
    task = TaskCreated(
        event_time=WHEN,
        task_id=f"call-new-signer:{people.jo}",
        supporter_id=people.jo,
        kind="call",
        reason="new signer",
        due_at=WHEN + timedelta(days=2),
        rule="call-new-signer",
        cause_event_id=uuid.uuid4(),
    )
    return [task, task.model_copy(update={"task_id": "call:sam", "supporter_id": people.sam})]


def outbox_copy(nudge_id: str, to: str, subject: str, body: str) -> OutboxMessage:
    """The local outbox's copy of an email written for a nudge."""
    return OutboxMessage(
        nudge_id=nudge_id,
        channel="email",
        to_address=to,
        subject=subject,
        body=body,
        created_at=WHEN,
    )


def sent_to_outbox(session: Session, nudge_id: str, to: str, subject: str, body: str) -> None:
    """A stored nudge sent by email to ``to`` through the local outbox, with its copy there."""
    sent = session.get(Nudge, nudge_id)
    assert sent is not None
    sent.status, sent.sent_at, sent.provider = "sent", WHEN, "outbox"
    sent.recipient = contact_key(KEY, "email", to)
    session.add(outbox_copy(nudge_id, to, subject, body))


def scored(sid: str) -> EngagementScored:
    return EngagementScored(
        event_time=WHEN,
        supporter_id=sid,
        score=3.5,
        rung="signer",
        cause_event_id=uuid.uuid4(),
        half_life_days=30,
    )


def post_outcome(client: httpx.Client, sid: str) -> None:
    """The outcome of the call about them, with notes (``outcome``'s)."""
    answer = client.post("/v1/events", json=outcome(sid))
    assert answer.status_code == 202, answer.text
