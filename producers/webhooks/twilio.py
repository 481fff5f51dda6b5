"""Twilio's inbound SMS and status callbacks: the delivery-status rules and applying them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from infra.consent import latest_consent, lift_suppression, suppress
from infra.db import ConsentRecord, Supporter, survivor_of
from producers.ledger import record_events
from producers.webhooks.common import (
    _SUPPORTER_ID,
    _Applier,
    _consent,
    _event_id,
    _in_transaction,
    _receipt,
    _supporters_with,
)
from producers.webhooks.keywords import Keyword
from schemas.events import Event, MessageState, TaskCreated
from schemas.identity import normalise_phone

TWILIO_RANK: Mapping[str, int] = {
    "accepted": 0,
    "scheduled": 0,
    "queued": 0,
    "sending": 1,
    "sent": 2,
    "delivered": 3,
    "undelivered": 3,
    "failed": 3,
    "read": 4,
}
"""How far a Twilio message has gone. ``receiving``, ``received`` (inbound), ``canceled`` and
``partially_delivered`` are not tracked."""
TWILIO_FINAL = frozenset({"undelivered", "failed", "read"})
TWILIO_EVENT_STATE: Mapping[str, MessageState] = {
    "accepted": "queued",
    "scheduled": "queued",
    "queued": "queued",
    "sent": "sent",
    "delivered": "delivered",
    "undelivered": "undelivered",
    "failed": "failed",
    "read": "opened",
}
"""The message.status event a Twilio status is reported as; ``sending`` is not reported."""


def twilio_moves(current: str | None, new: str) -> bool:
    """Whether a Twilio status callback moves a nudge's delivery status forwards.

    Callbacks arrive at least once and in any order: only a further status moves it; a
    terminal status (delivered, undelivered, failed) is never replaced by another one, except
    delivered by read; nothing follows undelivered, failed or read. A status not in
    ``TWILIO_RANK`` never moves; an unknown current status is as if there were none.
    """
    if new not in TWILIO_RANK or current in TWILIO_FINAL:
        return False
    return TWILIO_RANK[new] > TWILIO_RANK.get(current or "", -1)


_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_PHONE_CHARS = re.compile(r"\+?[0-9][0-9 ().-]{5,24}")


def sender_phone(sender: str) -> str | None:
    """The E.164 phone an inbound text came from; None when ``From`` is not a phone number
    (an alphanumeric sender, a short code Twilio writes without "+", ``whatsapp:+44...``).
    libphonenumber's form when it knows the number, else Twilio's own E.164 (a range it
    does not know yet, such as Ofcom's drama numbers)."""
    if not _PHONE_CHARS.fullmatch(sender):
        return None
    try:
        return normalise_phone(sender)
    except ValueError:
        return sender if _E164.fullmatch(sender) else None


def _last_wording(session: Session, sid: str, channel: str) -> str | None:
    """The wording of the supporter's newest grant on the channel (what a START restores)."""
    return session.scalars(
        select(ConsentRecord.wording_version)
        .where(
            ConsentRecord.supporter_id == sid,
            ConsentRecord.channel == channel,
            ConsentRecord.granted.is_(True),
        )
        .order_by(ConsentRecord.recorded_at.desc(), ConsentRecord.id.desc())
        .limit(1)
    ).first()


class _TwilioHooks(_Applier):
    """Applies verified Twilio requests, each in one transaction."""

    # --- Twilio inbound SMS ---

    def apply_sms(self, sid: str, phone: str, kind: Keyword, word: str) -> dict[str, Any]:
        """Withdraw or restore SMS consent for a phone, once per MessageSid."""

        def work(session: Session) -> dict[str, Any]:
            now = self.clock()
            if not _receipt(session, "twilio-sms", sid, now):
                return {"outcome": "duplicate"}
            source = f"sms_keyword:{word}"
            people = _supporters_with(session, self.key, "phone", phone)
            events: list[Event] = []
            if kind == "stop":
                suppress(session, self.key, "sms", phone, "replied STOP", source, now)
                events = [_consent(sid, p, "sms", False, source, now) for p in people]
                outcome = "withdrawn"
            else:
                lifted = lift_suppression(session, self.key, "sms", phone, source, now)
                # Only what was withdrawn is restored: a START from someone who never gave
                # consent on this channel lifts any suppression but grants nothing new.
                for person in people:
                    latest = latest_consent(session, person, "sms")
                    if latest is not None and not latest.granted:
                        wording = _last_wording(session, person, "sms")
                        events.append(_consent(sid, person, "sms", True, source, now, wording))
                outcome = "restored" if lifted or events else "nothing_to_restore"
            record_events(session, events, now)
            return {"outcome": outcome, "supporters": len(people), "consent_records": len(events)}

        return _in_transaction(self.sessions, work)

    def apply_reply(self, sid: str, phone: str) -> dict[str, Any]:
        """A text that is not a keyword ("please stop texting me", a question) needs a person:
        an objection in words is still an objection. Each supporter with the number gets a
        high-priority task due in a day, once per MessageSid; the text itself stays in
        Twilio (read it there by its sid), not in our topics."""

        def work(session: Session) -> dict[str, Any]:
            now = self.clock()
            people = _supporters_with(session, self.key, "phone", phone)
            if not people or not _receipt(session, "twilio-reply", sid, now):
                return {"outcome": "not_a_keyword", "tasks": 0}
            areas: dict[str, str | None] = dict(
                session.execute(
                    select(Supporter.supporter_id, Supporter.area).where(
                        Supporter.supporter_id.in_(people)
                    )
                ).all()
            )
            tasks: list[Event] = [
                TaskCreated(
                    event_id=_event_id("twilio-reply", sid, person),
                    event_time=now,
                    task_id=f"sms-reply:{sid}:{person}",
                    supporter_id=person,
                    kind="read_sms_reply",
                    reason=f"Replied to a text (message {sid}): read it in Twilio and answer. "
                    "If they ask us to stop, that is an opt-out: record it.",
                    due_at=now + timedelta(days=1),
                    area=areas.get(person),  # a queue filtered by area must not drop it
                    rule="inbound-sms-reply",
                    cause_event_id=_event_id("twilio-sms", sid),
                    priority="high",
                )
                for person in people
                if _SUPPORTER_ID.fullmatch(person)
            ]
            record_events(session, tasks, now)
            return {"outcome": "task_for_a_person", "tasks": len(tasks)}

        return _in_transaction(self.sessions, work)

    # --- Twilio status callbacks ---

    def apply_twilio_status(self, sid: str, status: str, error_code: str | None) -> str:
        def work(session: Session) -> str:
            now = self.clock()
            nudge = self.nudges.by_sms_message(session, sid)
            if nudge is None:
                return "unknown_message"
            outcome = "unchanged"
            if twilio_moves(nudge.delivery_status, status):
                self.nudges.set_delivery(session, nudge, status, now)
                outcome = "moved"
                state = TWILIO_EVENT_STATE.get(status)
                if state is not None:
                    event = self.nudges.message_status(
                        session,
                        nudge,
                        state,
                        now,
                        cause=f"twilio:{sid}:{state}",
                        provider="twilio",
                        provider_message_id=sid,
                        error_code=error_code,
                    )
                    record_events(session, [event], now)
            # A recipient who texted STOP to Twilio itself: never text them again. Kept apart
            # from the status move (it may come with a status already passed), once per sid.
            if error_code == "21610" and _receipt(session, "twilio-status", f"{sid}:21610", now):
                phone = self._phone_of(session, nudge.supporter_id)
                if phone is not None:
                    reason = "Twilio 21610: recipient opted out"
                    suppress(session, self.key, "sms", phone, reason, "twilio:21610", now)
                    outcome += "+suppressed"
            return outcome

        return _in_transaction(self.sessions, work)

    @staticmethod
    def _phone_of(session: Session, sid: str) -> str | None:
        for candidate in dict.fromkeys((sid, survivor_of(session, sid))):
            person = session.get(Supporter, candidate)
            if person is not None and person.phone:
                return person.phone
        return None
