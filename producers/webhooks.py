"""Provider webhooks: Twilio inbound SMS keywords and status callbacks, SendGrid's Event Webhook.

Every request is verified before anything in it is acted on: Twilio's HMAC signature over the
public URL and the form fields, SendGrid's ECDSA signature over timestamp and raw body plus a
freshness window. A request that fails is answered 403 and changes nothing. A verified request
is applied in one transaction, committed before the answer, with a receipt per provider event
so that a retried delivery changes nothing. Addresses, phone numbers and message bodies never
reach the logs or the answers.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from sendgrid.helpers.eventwebhook import EventWebhook
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from twilio.request_validator import RequestValidator

from infra.consent import latest_consent, lift_suppression, suppress
from infra.db import (
    ConsentRecord,
    IdentityLink,
    Nudge,
    Supporter,
    WebhookReceipt,
    insert_ignoring_duplicates,
    survivor_of,
)
from infra.http import problem
from producers.api import ProblemDetail
from producers.ledger import record_events
from schemas.events import (
    ConsentChanged,
    EmailClicked,
    Event,
    MessageState,
    MessageStatus,
    TaskCreated,
)
from schemas.identity import contact_identity, normalise_email, normalise_phone

log = structlog.get_logger(__name__)

# --- rules (pure) ------------------------------------------------------------------------------

OPT_OUT_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
)
OPT_IN_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})
Keyword = Literal["stop", "start", "help"]


def sms_keyword(body: str) -> tuple[Keyword, str] | None:
    """The keyword an inbound text is, with its word in capitals; None for anything else.

    The whole body, stripped of surrounding whitespace, must be exactly one keyword in any
    case: "Stop" is an opt-out, "STOP please" and "STOP." are not.
    """
    word = body.strip().upper()
    if word in OPT_OUT_WORDS:
        return "stop", word
    if word in OPT_IN_WORDS:
        return "start", word
    if word in HELP_WORDS:
        return "help", word
    return None


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


SENDGRID_DELIVERY: Mapping[str, str] = {
    "processed": "processed",
    "deferred": "deferred",
    "delivered": "delivered",
    "bounce": "bounced",
    "dropped": "dropped",
}
"""SendGrid delivery events and the delivery status each sets."""
SENDGRID_RANK: Mapping[str, int] = {
    "processed": 0,
    "deferred": 1,
    "delivered": 2,
    "bounced": 2,
    "dropped": 2,
}
SENDGRID_EVENT_STATE: Mapping[str, MessageState] = {
    "processed": "queued",
    "deferred": "deferred",
    "delivered": "delivered",
    "bounced": "bounced",
    "dropped": "dropped",
}


def sendgrid_moves(current: str | None, new: str) -> bool:
    """Whether a SendGrid delivery event moves a nudge's delivery status forwards: processed
    < deferred (may repeat) < delivered | bounced | dropped; a terminal one is never replaced."""
    if new not in SENDGRID_RANK:
        return False
    return SENDGRID_RANK[new] > SENDGRID_RANK.get(current or "", -1)


SENDGRID_WITHDRAWALS: Mapping[str, tuple[str, MessageState]] = {
    "spamreport": ("spam report", "spamreport"),
    "unsubscribe": ("unsubscribed", "unsubscribed"),
    "group_unsubscribe": ("unsubscribed from a group", "unsubscribed"),
}
"""Events that withdraw email consent: the suppression's reason and the status reported."""
SENDGRID_EVENTS = frozenset({*SENDGRID_DELIVERY, *SENDGRID_WITHDRAWALS, "click", "open"})
DROPPED_SUPPRESSING = ("Bounced Address", "Unsubscribed Address", "Spam Reporting Address")
"""A ``dropped`` event's reasons that mean the address must not be sent to again."""


def sendgrid_suppression(item: Mapping[str, Any]) -> str | None:
    """Why a delivery event's address goes on the email suppression list, or None: a hard
    bounce (``type`` other than ``blocked``, which is temporary), or a drop because SendGrid
    holds the address on its own bounce, unsubscribe or spam list."""
    kind = item.get("event")
    if kind == "bounce" and item.get("type") != "blocked":
        return "bounce"
    reason = item.get("reason")
    if kind == "dropped" and isinstance(reason, str):
        for known in DROPPED_SUPPRESSING:
            if known in reason:
                return f"dropped: {known}"
    return None


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


def fresh(timestamp: int, now: datetime, max_age_s: float, skew_s: float = 60.0) -> bool:
    """Whether a signed timestamp (Unix seconds) is at most ``max_age_s`` old and at most
    ``skew_s`` ahead of ``now``: the signature does not expire by itself, so a captured
    request could otherwise be replayed for ever."""
    at = now.timestamp()
    return at - max_age_s <= timestamp <= at + skew_s


# --- wiring ------------------------------------------------------------------------------------

TWILIO_MAX_BODY = 64 * 1024
"""An inbound SMS form is a few kilobytes (a body is at most 1,600 characters)."""
SENDGRID_MAX_BODY = 8 * 1024 * 1024
"""Generous headroom over SendGrid's event batches."""
MAX_FUTURE_SKEW_S = 60.0
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
HELP_TEXT = (
    "{org}: texts about local meetings and campaigns. Reply STOP to opt out, START to opt back in."
)

_NAMESPACE = uuid.UUID("5b0c6f0e-3a52-4d0e-8f7c-2f9a8f6d1c41")
# Whole-value patterns (used with fullmatch).
_SID = re.compile(r"[A-Za-z0-9]{1,64}")
_SUPPORTER_ID = re.compile(r"sup_[0-9a-f]{32}")
_PRINTABLE = re.compile(r"[\x21-\x7e]{1,200}")
_TEXT = re.compile(r"[^\x00-\x1f\x7f]{1,200}")
_DIGITS = re.compile(r"[0-9]{1,15}")
_EVENT_NAME = re.compile(r"[a-z_]{1,40}")
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)

T = TypeVar("T")


class FormParams(dict[str, list[str]]):
    """Form fields by name (each name's values in order), as Twilio's validator reads a
    multi-valued form: it calls ``getall``."""

    def getall(self, name: str) -> list[str]:
        return self[name]

    def first(self, name: str) -> str | None:
        values = self.get(name)
        return values[0] if values else None


def parse_form(body: bytes) -> FormParams | None:
    """An ``application/x-www-form-urlencoded`` body (UTF-8), or None if it is not one."""
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=500,
        )
    except (UnicodeDecodeError, ValueError):
        return None
    params = FormParams()
    for name, value in pairs:
        params.setdefault(name, []).append(value)
    return params


def twilio_signature_valid(auth_token: str, url: str, params: FormParams, signature: str) -> bool:
    """Twilio's own check of ``X-Twilio-Signature`` (HMAC-SHA1 of the URL and sorted fields);
    anything it cannot handle counts as invalid."""
    try:
        return bool(RequestValidator(auth_token).validate(url, params, signature))
    except Exception:  # a forged request must never become a 500
        return False


def sendgrid_signature_valid(
    verifier: EventWebhook, body: bytes, signature: str, timestamp: str
) -> bool:
    """SendGrid's own check of the signed Event Webhook over timestamp and the raw body. It
    raises on a malformed base64 signature, a body that is not UTF-8 and other garbage: all
    of that counts as invalid."""
    try:
        return bool(verifier.verify_signature(body.decode("utf-8"), signature, timestamp))
    except Exception:  # see above: never a 500
        return False


class SkippedItem(BaseModel):
    index: int
    reason: str


class WebhookSummary(BaseModel):
    """What became of a SendGrid batch: items applied, repeats of items applied before, and
    items skipped (unknown kind, missing fields, unknown nudge), each with the reason."""

    applied: int = 0
    duplicates: int = 0
    skipped: list[SkippedItem] = []


@dataclass
class _Tally:
    applied: int = 0
    duplicates: int = 0
    skipped: list[SkippedItem] = field(default_factory=list)


def _twiml(status: int = 200, message: str | None = None) -> Response:
    content = EMPTY_TWIML
    if message is not None:
        content = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Response><Message>{escape(message)}</Message></Response>"
        )
    return Response(content, status_code=status, media_type="text/xml")


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The raw body, or None when it is longer than ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _transient(exc: Exception) -> bool:
    if isinstance(exc, OperationalError):
        # PostgreSQL's serialization failure and deadlock; other errors are not transient.
        return getattr(exc.orig, "pgcode", None) in {"40001", "40P01"}
    return True


def _in_transaction(sessions: sessionmaker[Session], work: Callable[[Session], T]) -> T:
    """Run ``work`` in one transaction, again if a concurrent one got in its way (all it does
    is keyed by receipts and deterministic event ids, so running it again is safe)."""
    for attempt in range(3):
        try:
            with sessions.begin() as session:
                return work(session)
        except (IntegrityError, OperationalError) as exc:
            if attempt == 2 or not _transient(exc):
                raise
    raise AssertionError("unreachable")


def _receipt(session: Session, provider: str, receipt_id: str, now: datetime) -> bool:
    """Record that a provider event is applied; False if it was before (a retried delivery)."""
    row = {"provider": provider, "receipt_id": receipt_id, "received_at": now}
    return insert_ignoring_duplicates(session, WebhookReceipt, [row]) == 1


def _event_id(*parts: str) -> uuid.UUID:
    """The same event id every time the same provider event is applied."""
    return uuid.uuid5(_NAMESPACE, ":".join(parts))


def _supporters_with(
    session: Session, key: str, kind: Literal["email", "phone"], address: str
) -> list[str]:
    """Everyone an email or E.164 phone belongs to, as they are now (after merges): by the
    identity link, and by the contact column for rows older than the links."""
    identity = contact_identity(key, kind, address)
    ids = set(
        session.scalars(select(IdentityLink.supporter_id).where(IdentityLink.identity == identity))
    )
    column = Supporter.email if kind == "email" else Supporter.phone
    ids.update(session.scalars(select(Supporter.supporter_id).where(column == address)))
    return sorted(s for s in {survivor_of(session, i) for i in ids} if _SUPPORTER_ID.fullmatch(s))


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


def _item_time(item: Mapping[str, Any], now: datetime) -> datetime:
    """When a SendGrid event happened (its ``timestamp``), or now if that is missing or absurd."""
    ts = item.get("timestamp")
    if (
        isinstance(ts, int | float)
        and not isinstance(ts, bool)
        and _EARLIEST.timestamp() <= ts <= (now + timedelta(days=1)).timestamp()
    ):
        return min(datetime.fromtimestamp(ts, UTC), now)
    return now


def _sendgrid_receipt_id(item: Mapping[str, Any]) -> str | None:
    """``sg_event_id``; failing that ``sg_message_id:event:timestamp``. Hashed when it is too
    long or not plain ASCII, so any text fits the receipt table."""
    event_id = item.get("sg_event_id")
    if isinstance(event_id, str) and event_id:
        raw = event_id
    else:
        message_id, kind, ts = item.get("sg_message_id"), item.get("event"), item.get("timestamp")
        if not (isinstance(message_id, str) and message_id and isinstance(kind, str)):
            return None
        if not isinstance(ts, int | float) or isinstance(ts, bool):
            return None
        raw = f"{message_id}:{kind}:{ts}"
    if _PRINTABLE.fullmatch(raw):
        return raw
    return "sha256:" + hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def _email_of(item: Mapping[str, Any]) -> str | None:
    raw = item.get("email")
    if not isinstance(raw, str) or len(raw) > 320:
        return None
    try:
        return normalise_email(raw)
    except ValueError:
        return None


class NudgeRecords(Protocol):
    """What the webhooks read and change of the nudges the sender keeps (its module stays the
    only writer of that table; engage/ hands an implementation in)."""

    def by_sms_message(self, session: Session, message_sid: str) -> Nudge | None: ...

    def email(
        self, session: Session, nudge_id: str | None, message_id: str | None
    ) -> Nudge | None: ...

    def set_delivery(self, session: Session, nudge: Nudge, status: str, at: datetime) -> None: ...

    def confirm_sent(
        self,
        session: Session,
        nudge: Nudge,
        provider: str,
        provider_message_id: str | None,
        at: datetime,
        reason: str,
    ) -> bool: ...

    def message_status(
        self,
        session: Session,
        nudge: Nudge,
        state: MessageState,
        at: datetime,
        *,
        cause: str,
        provider: str | None = None,
        provider_message_id: str | None = None,
        error_code: str | None = None,
    ) -> MessageStatus: ...


@dataclass
class _Webhooks:
    sessions: sessionmaker[Session]
    key: str
    org_name: str
    clock: Callable[[], datetime]
    nudges: NudgeRecords

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
                events = [self._consent(sid, p, "sms", False, source, now) for p in people]
                outcome = "withdrawn"
            else:
                lifted = lift_suppression(session, self.key, "sms", phone, source, now)
                # Only what was withdrawn is restored: a START from someone who never gave
                # consent on this channel lifts any suppression but grants nothing new.
                for person in people:
                    latest = latest_consent(session, person, "sms")
                    if latest is not None and not latest.granted:
                        wording = _last_wording(session, person, "sms")
                        events.append(self._consent(sid, person, "sms", True, source, now, wording))
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

    @staticmethod
    def _consent(
        cause: str,
        sid: str,
        channel: Literal["email", "sms"],
        granted: bool,
        source: str,
        at: datetime,
        wording: str | None = None,
    ) -> ConsentChanged:
        return ConsentChanged(
            event_id=_event_id(source, cause, sid),
            event_time=at,
            supporter_id=sid,
            channel=channel,
            granted=granted,
            source=source,
            wording_version=wording,
        )

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

    # --- SendGrid events ---

    def apply_sendgrid(self, items: list[Any]) -> WebhookSummary:
        def work(session: Session) -> _Tally:
            now = self.clock()
            tally = _Tally()
            for index, item in enumerate(items):
                outcome = self._sendgrid_item(session, item, now)
                if outcome == "applied":
                    tally.applied += 1
                elif outcome == "duplicate":
                    tally.duplicates += 1
                else:
                    tally.skipped.append(SkippedItem(index=index, reason=outcome))
            return tally

        tally = _in_transaction(self.sessions, work)
        return WebhookSummary(
            applied=tally.applied, duplicates=tally.duplicates, skipped=tally.skipped
        )

    def _sendgrid_nudge(self, session: Session, item: Mapping[str, Any]) -> Nudge | None:
        """The nudge an event is about: by the ``nudge_id`` custom argument our sender adds,
        else by the X-Message-Id that ``sg_message_id`` starts with."""
        nudge_id = item.get("nudge_id")
        if isinstance(nudge_id, str) and _TEXT.fullmatch(nudge_id):
            return self.nudges.email(session, nudge_id, None)
        message_id = item.get("sg_message_id")
        if isinstance(message_id, str) and message_id:
            prefix = message_id.split(".", 1)[0]
            if _PRINTABLE.fullmatch(prefix):
                return self.nudges.email(session, None, prefix)
        return None

    def _sendgrid_item(self, session: Session, item: Any, now: datetime) -> str:
        """Apply one event: "applied", "duplicate", or the reason it was skipped. Everything
        is checked and built before the first write, so a skipped item writes nothing."""
        if not isinstance(item, dict):
            return "not a JSON object"
        kind = item.get("event")
        if not isinstance(kind, str):
            return "no event"
        if kind not in SENDGRID_EVENTS:
            shown = kind if _EVENT_NAME.fullmatch(kind) else "?"
            return f"event not handled: {shown}"
        receipt = _sendgrid_receipt_id(item)
        if receipt is None:
            return "no sg_event_id, nor sg_message_id with timestamp"
        nudge = self._sendgrid_nudge(session, item)
        email = _email_of(item)
        at = _item_time(item, now)
        raw_message_id = item.get("sg_message_id")
        message_id = (
            raw_message_id
            if isinstance(raw_message_id, str) and _PRINTABLE.fullmatch(raw_message_id)
            else None
        )

        def status(state: MessageState, cause: str = receipt) -> MessageStatus:
            assert nudge is not None
            return self.nudges.message_status(
                session,
                nudge,
                state,
                at,
                cause=f"sendgrid:{cause}",
                provider="sendgrid",
                provider_message_id=message_id,
            )

        suppression: tuple[str, str] | None = None  # (reason, source)
        events: list[Event] = []
        delivery: str | None = None
        try:
            if kind in SENDGRID_DELIVERY:
                reason = sendgrid_suppression(item)
                if reason is not None and email is not None:
                    suppression = (reason, f"sendgrid:{kind}")
                if nudge is None and suppression is None:
                    return "unknown nudge"
                if nudge is not None:
                    delivery = SENDGRID_DELIVERY[kind]
                    events.append(status(SENDGRID_EVENT_STATE[delivery]))
            elif kind in SENDGRID_WITHDRAWALS:
                reason, state = SENDGRID_WITHDRAWALS[kind]
                source = f"sendgrid:{kind}"
                if nudge is not None:
                    people = [survivor_of(session, nudge.supporter_id)]
                elif email is not None:
                    people = _supporters_with(session, self.key, "email", email)
                else:
                    return "unknown nudge and no valid email"
                if email is not None:
                    suppression = (reason, source)
                events.extend(
                    self._consent(receipt, p, "email", False, source, at)
                    for p in people
                    if _SUPPORTER_ID.fullmatch(p)
                )
                if nudge is not None:
                    events.append(status(state))
            else:  # click, open
                if nudge is None:
                    return "unknown nudge"
                if kind == "click":
                    url = item.get("url")
                    events.append(
                        EmailClicked(
                            event_id=_event_id("sendgrid", receipt, nudge.nudge_id),
                            event_time=at,
                            supporter_id=survivor_of(session, nudge.supporter_id),
                            nudge_id=nudge.nudge_id,
                            url=url if isinstance(url, str) and len(url) <= 2000 else None,
                        )
                    )
                else:
                    events.append(status("opened"))
        except ValidationError as exc:
            fields = sorted({".".join(map(str, e["loc"])) for e in exc.errors()})
            return f"invalid: {', '.join(fields)[:100]}"

        if not _receipt(session, "sendgrid", receipt, now):
            return "duplicate"
        if suppression is not None and email is not None:
            suppress(session, self.key, "email", email, suppression[0], suppression[1], now)
        if delivery is not None:
            assert nudge is not None
            if sendgrid_moves(nudge.delivery_status, delivery):
                self.nudges.set_delivery(session, nudge, delivery, now)
            else:  # not a move: no status event either
                events = [e for e in events if not isinstance(e, MessageStatus)]
        # The send timed out, but SendGrid reports on the message: it took it. Settled here,
        # before the sender's lookup would ask (and never resent).
        if nudge is not None and self.nudges.confirm_sent(
            session,
            nudge,
            "sendgrid",
            message_id.split(".", 1)[0] if message_id is not None else None,
            at,
            f"SendGrid reported it ({kind}) after an unanswered send",
        ):
            events.append(status("sent", f"{receipt}:confirmed"))
        record_events(session, events, now)
        return "applied"


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "Malformed body, or a required field missing.",
        403: "Missing or invalid signature, stale timestamp, or the webhook is not configured.",
        413: "Body too large.",
    }
    return {code: {"model": ProblemDetail, "description": described[code]} for code in codes}


_TWIML_200: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "TwiML (empty, or the HELP answer).",
        "content": {"text/xml": {"schema": {"type": "string"}}},
    }
}


def _form_body(required: Iterable[str], fields: Iterable[str]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": list(required),
                        "properties": {name: {"type": "string"} for name in fields},
                        "additionalProperties": {"type": "string"},
                    }
                }
            },
        }
    }


def webhooks_router(
    sessions: sessionmaker[Session],
    *,
    identity_key: str,
    public_url: str,
    org_name: str,
    twilio_auth_token: str | None,
    sendgrid_public_key: str | None,
    max_age_s: float,
    nudges: NudgeRecords,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> APIRouter:
    """The provider webhooks. Without a Twilio auth token or a SendGrid public key, that
    provider's endpoints refuse every request (403). ``public_url`` is the base Twilio was
    given (scheme, host, any path prefix): the signature covers it, not the Host we see."""
    router = APIRouter(prefix="/webhooks", tags=["webhooks"])
    hooks = _Webhooks(sessions, identity_key, org_name, clock, nudges)
    base = public_url.rstrip("/")
    verifier: EventWebhook | None = None
    if sendgrid_public_key:
        try:
            verifier = EventWebhook(sendgrid_public_key)
        except Exception:  # a bad key is reported; the rest of the app runs
            log.error("webhook.sendgrid_key_unusable")

    async def twilio_form(request: Request) -> FormParams | Response:
        """The verified form of a Twilio request, or the answer refusing it."""
        signature = request.headers.get("x-twilio-signature")
        if not twilio_auth_token:
            return problem(403, "X-Twilio-Signature", "the Twilio webhook is not configured")
        if not signature:
            return problem(403, "X-Twilio-Signature", "missing")
        body = await _read_body(request, TWILIO_MAX_BODY)
        if body is None:
            return problem(413, "body", f"larger than {TWILIO_MAX_BODY} bytes")
        params = parse_form(body)
        if params is None:
            return problem(400, "body", "not a UTF-8 application/x-www-form-urlencoded form")
        url = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if not twilio_signature_valid(twilio_auth_token, url, params, signature):
            return problem(403, "X-Twilio-Signature", "does not match the request")
        return params

    @router.post(
        "/twilio/sms",
        response_class=Response,
        responses={**_TWIML_200, **_problems(400, 403, 413)},
        openapi_extra=_form_body(
            ["MessageSid", "From"], ["MessageSid", "SmsSid", "From", "To", "Body"]
        ),
        summary="Twilio inbound SMS: STOP/START/HELP keywords",
    )
    async def twilio_sms(request: Request) -> Response:
        """An exact keyword (any case, alone in the message) withdraws SMS consent (STOP,
        STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPTOUT), restores it (START, YES,
        UNSTOP) or is answered (HELP, INFO); any other text from a known number becomes an
        organiser's task to read it (an objection in words is still an objection)."""
        form = await twilio_form(request)
        if isinstance(form, Response):
            log.info("webhook.twilio_sms", outcome="refused", status=form.status_code)
            return form
        sid = form.first("MessageSid") or form.first("SmsSid") or form.first("SmsMessageSid")
        if not sid or not _SID.fullmatch(sid):
            return problem(400, "MessageSid", "missing or malformed")
        sender = form.first("From")
        if sender is None:
            return problem(400, "From", "missing")
        keyword = sms_keyword(form.first("Body") or "")
        if keyword is None:
            phone = sender_phone(sender)
            done = {"outcome": "not_a_keyword"}
            if phone is not None:
                done = await run_in_threadpool(hooks.apply_reply, sid, phone)
            log.info("webhook.twilio_sms", message_sid=sid, **done)
            return _twiml()
        kind, word = keyword
        if kind == "help":
            log.info("webhook.twilio_sms", message_sid=sid, keyword=word, outcome="helped")
            return _twiml(message=HELP_TEXT.format(org=org_name))
        phone = sender_phone(sender)
        if phone is None:
            log.warning("webhook.twilio_sms", message_sid=sid, keyword=word, outcome="no_phone")
            return _twiml()
        done = await run_in_threadpool(hooks.apply_sms, sid, phone, kind, word)
        log.info("webhook.twilio_sms", message_sid=sid, keyword=word, **done)
        return _twiml()

    @router.post(
        "/twilio/status",
        response_class=Response,
        responses={**_TWIML_200, **_problems(400, 403, 413)},
        openapi_extra=_form_body(
            ["MessageSid", "MessageStatus"], ["MessageSid", "MessageStatus", "ErrorCode"]
        ),
        summary="Twilio message status callback",
    )
    async def twilio_status(request: Request) -> Response:
        """Moves the nudge's delivery status forwards only (callbacks come in any order);
        ErrorCode 21610 suppresses the recipient's phone. An unknown message is ignored."""
        form = await twilio_form(request)
        if isinstance(form, Response):
            log.info("webhook.twilio_status", outcome="refused", status=form.status_code)
            return form
        sid = form.first("MessageSid") or form.first("SmsSid")
        if not sid or not _SID.fullmatch(sid):
            return problem(400, "MessageSid", "missing or malformed")
        status = (form.first("MessageStatus") or form.first("SmsStatus") or "").strip().lower()
        if not status:
            return problem(400, "MessageStatus", "missing")
        raw_code = (form.first("ErrorCode") or "").strip()
        error_code = raw_code if _DIGITS.fullmatch(raw_code) else None
        if status not in TWILIO_RANK:
            log.info("webhook.twilio_status", message_sid=sid, outcome="status_not_tracked")
            return _twiml()
        outcome = await run_in_threadpool(hooks.apply_twilio_status, sid, status, error_code)
        log.info(
            "webhook.twilio_status",
            message_sid=sid,
            status=status,
            error_code=error_code,
            outcome=outcome,
        )
        return _twiml()

    @router.post(
        "/sendgrid/events",
        response_model=WebhookSummary,
        responses=_problems(400, 403, 413),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"type": "array", "items": {"type": "object"}}}
                },
            }
        },
        summary="SendGrid signed Event Webhook",
    )
    async def sendgrid_events(request: Request) -> JSONResponse:
        """Always 200 for a verified array: an item that cannot be applied is skipped and
        reported, since SendGrid retries the whole batch on any other answer."""
        signature = request.headers.get("x-twilio-email-event-webhook-signature")
        timestamp = request.headers.get("x-twilio-email-event-webhook-timestamp")
        refusal: JSONResponse | None = None
        if verifier is None:
            refusal = problem(403, "signature", "the SendGrid webhook is not configured")
        elif not signature or not timestamp:
            refusal = problem(403, "signature", "signature and timestamp headers are required")
        elif not _DIGITS.fullmatch(timestamp) or not fresh(
            int(timestamp), clock(), max_age_s, MAX_FUTURE_SKEW_S
        ):
            refusal = problem(403, "timestamp", "not a Unix time within the accepted window")
        if refusal is not None:
            log.info("webhook.sendgrid", outcome="refused", status=refusal.status_code)
            return refusal
        assert verifier is not None and signature is not None and timestamp is not None
        body = await _read_body(request, SENDGRID_MAX_BODY)
        if body is None:
            return problem(413, "body", f"larger than {SENDGRID_MAX_BODY} bytes")
        if not sendgrid_signature_valid(verifier, body, signature, timestamp):
            log.info("webhook.sendgrid", outcome="refused", status=403)
            return problem(403, "signature", "does not match the body and timestamp")
        try:
            items = json.loads(body)
        except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError too
            return problem(400, "body", "malformed JSON")
        if not isinstance(items, list):
            return problem(400, "body", "a JSON array of events is required")
        summary = await run_in_threadpool(hooks.apply_sendgrid, items)
        log.info(
            "webhook.sendgrid",
            events=len(items),
            applied=summary.applied,
            duplicates=summary.duplicates,
            skipped=len(summary.skipped),
        )
        return JSONResponse(summary.model_dump(mode="json"))

    return router
