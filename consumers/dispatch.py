"""The dispatcher: sends pending nudges once, checking consent at the moment of sending."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote

import structlog
from sqlalchemy.orm import Session, sessionmaker

from consumers.messages import OutgoingMessage, Sender, SendError
from consumers.rendering import TemplateBook
from consumers.repository import (
    claim_nudges,
    consented,
    contacts,
    pending_nudges,
    set_nudge_status,
    write_outbox,
)
from infra.db import Nudge, Supporter
from schemas.identity import opt_out_token

log = structlog.get_logger(__name__)


@dataclass
class _Plan:
    """What to do with one pending nudge, worked out before any write lock is taken."""

    nudge: Nudge
    message: OutgoingMessage | None
    status: str = "ready"
    reason: str | None = None


@dataclass
class Dispatcher:
    """Each nudge goes pending -> sending -> sent | skipped | failed | ambiguous. A nudge of
    a rule's hold-out group is stored as held_out and stays so: only pending ones are read
    and claimed.

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
    link_key: str = field(default="", repr=False)
    """Signs the unsubscribe links (schemas.identity.opt_out_token)."""

    def dispatch_pending(self, limit: int = 500) -> int:
        """Claim and send up to ``limit`` pending nudges; return how many were claimed."""
        return len(self._dispatch(limit, None))

    def dispatch(self, nudge_id: str) -> str | None:
        """Send one nudge; its final status, or None when it was not pending."""
        statuses = self._dispatch(1, [nudge_id])
        return statuses[0] if statuses else None

    def _dispatch(self, limit: int, nudge_ids: list[str] | None) -> list[str]:
        """Render outside any write lock; then one short transaction claims the nudges,
        checks consent again, and settles outbox sends and skips; provider calls follow,
        each result in a transaction of its own."""
        with self.sessions() as session:
            nudges = pending_nudges(session, limit, nudge_ids)
            people = contacts(session, [n.supporter_id for n in nudges])
            plans = [self._plan(n, people.get(n.supporter_id)) for n in nudges]
        if not plans:
            return []
        statuses: dict[str, str] = {}
        to_send: list[tuple[_Plan, Sender]] = []
        with self.sessions.begin() as session:
            claimed = claim_nudges(session, [p.nudge.nudge_id for p in plans])
            granted = consented(session, [(p.nudge.supporter_id, p.nudge.channel) for p in plans])
            for plan in plans:
                nudge = plan.nudge
                if nudge.nudge_id not in claimed:
                    continue
                if (nudge.supporter_id, nudge.channel) not in granted:
                    plan.status, plan.reason = "skipped", f"no {nudge.channel} consent"
                sender = self.senders.get(nudge.channel)
                if plan.status == "ready" and sender is not None:
                    to_send.append((plan, sender))
                    continue
                if plan.status == "ready" and plan.message is not None:
                    message = plan.message
                    write_outbox(
                        session,
                        nudge.nudge_id,
                        nudge.channel,
                        message.to,
                        message.subject,
                        message.body,
                        datetime.now(UTC),
                    )
                    plan.status = "sent"
                set_nudge_status(session, nudge.nudge_id, plan.status, plan.reason)
                statuses[nudge.nudge_id] = self._done(nudge, plan.status, plan.reason)
        for plan, sender in to_send:
            assert plan.message is not None
            outcome, error, provider_id = self._send(sender, plan.message)
            with self.sessions.begin() as session:
                set_nudge_status(session, plan.nudge.nudge_id, outcome, error, provider_id)
            statuses[plan.nudge.nudge_id] = self._done(plan.nudge, outcome, error)
        return [statuses[p.nudge.nudge_id] for p in plans if p.nudge.nudge_id in statuses]

    def opt_out_url(self, nudge_id: str) -> str:
        token = opt_out_token(self.link_key, nudge_id)
        return f"{self.public_url}/unsubscribe/{quote(nudge_id, safe=':')}?t={token}"

    def _plan(self, nudge: Nudge, person: Supporter | None) -> _Plan:
        address = None
        if person is not None:
            address = person.email if nudge.channel == "email" else person.phone
        if person is None or not address:
            return _Plan(nudge, None, "skipped", f"no {nudge.channel} address")
        context = {k: str(v) for k, v in nudge.context.items()}
        if person.first_name:
            context["first_name"] = person.first_name
        try:
            message = self.templates.render(
                nudge.template,
                nudge.channel,
                context,
                nudge_id=nudge.nudge_id,
                to=address,
                org_name=self.org_name,
                opt_out_url=self.opt_out_url(nudge.nudge_id),
            )
        except (KeyError, ValueError) as exc:
            return _Plan(nudge, None, "failed", f"could not render: {exc}")
        return _Plan(nudge, message)

    def _send(self, sender: Sender, message: OutgoingMessage) -> tuple[str, str | None, str | None]:
        try:
            result = sender.send(message)
        except SendError as exc:
            return ("ambiguous" if exc.ambiguous else "failed"), str(exc), None
        return "sent", None, result.message_id

    @staticmethod
    def _done(nudge: Nudge, status: str, reason: str | None) -> str:
        log.info(
            "nudge.dispatched",
            nudge_id=nudge.nudge_id,
            rule=nudge.rule,
            channel=nudge.channel,
            status=status,
            reason=reason,
        )
        return status
