"""What the webhooks share: the nudges port, one transaction with retries, receipts, event ids,
the supporters an address belongs to, and the consent event a webhook records."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from infra.db import (
    IdentityLink,
    Nudge,
    Supporter,
    WebhookReceipt,
    insert_ignoring_duplicates,
    survivor_of,
)
from schemas.events import ConsentChanged, MessageState, MessageStatus
from schemas.identity import contact_identity

_NAMESPACE = uuid.UUID("5b0c6f0e-3a52-4d0e-8f7c-2f9a8f6d1c41")
# Whole-value pattern (used with fullmatch).
_SUPPORTER_ID = re.compile(r"sup_[0-9a-f]{32}")

T = TypeVar("T")


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
class _Applier:
    """What applying a verified provider request needs; each provider's applier extends it."""

    sessions: sessionmaker[Session]
    key: str
    clock: Callable[[], datetime]
    nudges: NudgeRecords


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
