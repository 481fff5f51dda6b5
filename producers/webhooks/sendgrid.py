"""SendGrid's Event Webhook: the delivery and suppression rules and applying a batch of events."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from infra.consent import suppress
from infra.db import Nudge, survivor_of
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
from schemas.events import EmailClicked, Event, MessageState, MessageStatus
from schemas.identity import normalise_email

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


# Whole-value patterns (used with fullmatch).
_PRINTABLE = re.compile(r"[\x21-\x7e]{1,200}")
_TEXT = re.compile(r"[^\x00-\x1f\x7f]{1,200}")
_EVENT_NAME = re.compile(r"[a-z_]{1,40}")
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


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


class _SendGridHooks(_Applier):
    """Applies verified SendGrid batches, each in one transaction."""

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
                    _consent(receipt, p, "email", False, source, at)
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
