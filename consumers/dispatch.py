"""The dispatcher: sends pending nudges once, checking consent at the moment of sending."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from sqlalchemy.orm import Session, sessionmaker

from consumers.messages import OutgoingMessage, Sender, SendError
from consumers.rendering import TemplateBook
from consumers.repository import (
    claim_nudge,
    contact,
    has_consent,
    pending_nudge_ids,
    write_outbox,
)
from infra.db import Nudge

log = structlog.get_logger(__name__)


@dataclass
class Dispatcher:
    """Each nudge goes pending -> sending -> sent | skipped | failed | ambiguous.

    With no provider for a channel (the embedded default) the message is written to the
    outbox in the same transaction that marks it sent, so it happens exactly once. With a
    provider, 'sending' is committed before the call, so a crash mid-call leaves the nudge
    in 'sending' for a person to check rather than sending it twice.
    """

    sessions: sessionmaker[Session]
    templates: TemplateBook
    senders: dict[str, Sender]
    org_name: str
    public_url: str

    def dispatch_pending(self, limit: int = 500) -> int:
        with self.sessions() as session:
            ids = pending_nudge_ids(session, limit)
        for nudge_id in ids:
            self.dispatch(nudge_id)
        return len(ids)

    def dispatch(self, nudge_id: str) -> str | None:
        with self.sessions.begin() as session:
            nudge = claim_nudge(session, nudge_id)
            if nudge is None:
                return None
            message, reason = self._prepare(session, nudge)
            if message is None:
                nudge.status, nudge.reason = "skipped", reason
                return self._done(nudge)
            sender = self.senders.get(nudge.channel)
            if sender is None:
                write_outbox(
                    session,
                    nudge.nudge_id,
                    nudge.channel,
                    message.to,
                    message.subject,
                    message.body,
                    datetime.now(UTC),
                )
                nudge.status = "sent"
                return self._done(nudge)
        status, reason, provider_id = self._send(sender, message)
        with self.sessions.begin() as session:
            row = session.get(Nudge, nudge_id)
            assert row is not None
            row.status, row.reason, row.provider_message_id = status, reason, provider_id
            return self._done(row)

    def _prepare(self, session: Session, nudge: Nudge) -> tuple[OutgoingMessage | None, str]:
        if not has_consent(session, nudge.supporter_id, nudge.channel):
            return None, f"no {nudge.channel} consent"
        person = contact(session, nudge.supporter_id)
        address = None
        if person is not None:
            address = person.email if nudge.channel == "email" else person.phone
        if not address or person is None:
            return None, f"no {nudge.channel} address"
        context = {k: str(v) for k, v in nudge.context.items()}
        if person.first_name:
            context["first_name"] = person.first_name
        message = self.templates.render(
            nudge.template,
            nudge.channel,
            context,
            nudge_id=nudge.nudge_id,
            to=address,
            org_name=self.org_name,
            opt_out_url=f"{self.public_url}/unsubscribe/{nudge.nudge_id}",
        )
        return message, ""

    def _send(self, sender: Sender, message: OutgoingMessage) -> tuple[str, str | None, str | None]:
        try:
            result = sender.send(message)
        except SendError as exc:
            return ("ambiguous" if exc.ambiguous else "failed"), str(exc), None
        return "sent", None, result.message_id

    @staticmethod
    def _done(nudge: Nudge) -> str:
        log.info(
            "nudge.dispatched",
            nudge_id=nudge.nudge_id,
            rule=nudge.rule,
            channel=nudge.channel,
            status=nudge.status,
            reason=nudge.reason,
        )
        return nudge.status
