"""The dispatcher: sends pending nudges once, checking consent at the moment of sending."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from sqlalchemy.orm import Session, sessionmaker

from consumers.messages import OutgoingMessage, Sender, SendError
from consumers.rendering import TemplateBook
from consumers.repository import (
    claim_pending,
    contact,
    has_consent,
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
        """Claim and send up to ``limit`` pending nudges; return how many were claimed."""
        return len(self._dispatch(limit, None))

    def dispatch(self, nudge_id: str) -> str | None:
        """Send one nudge; its final status, or None when it was not pending."""
        statuses = self._dispatch(1, [nudge_id])
        return statuses[0] if statuses else None

    def _dispatch(self, limit: int, nudge_ids: list[str] | None) -> list[str]:
        """Outbox sends, skips and failures to render are settled in the claiming
        transaction; provider sends happen after it commits, each result in its own."""
        to_send: list[tuple[str, Sender, OutgoingMessage]] = []
        statuses: dict[str, str] = {}
        with self.sessions.begin() as session:
            claimed = claim_pending(session, limit, nudge_ids)
            for nudge in claimed:
                try:
                    message, reason = self._prepare(session, nudge)
                except (KeyError, ValueError) as exc:
                    message, reason = None, f"could not render: {exc}"
                    nudge.status = "failed"
                if message is None:
                    nudge.status = "failed" if nudge.status == "failed" else "skipped"
                    nudge.reason = reason
                    statuses[nudge.nudge_id] = self._done(nudge)
                    continue
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
                    statuses[nudge.nudge_id] = self._done(nudge)
                else:
                    to_send.append((nudge.nudge_id, sender, message))
        for nudge_id, sender, message in to_send:
            outcome, error, provider_id = self._send(sender, message)
            with self.sessions.begin() as session:
                row = session.get(Nudge, nudge_id)
                if row is not None:
                    row.status, row.reason, row.provider_message_id = outcome, error, provider_id
                    statuses[nudge_id] = self._done(row)
        return [statuses[n.nudge_id] for n in claimed if n.nudge_id in statuses]

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
