"""The dispatcher: sends each due nudge at most once, checking consent and policy at sending time.

A nudge's life: pending (or held until quiet hours end) -> sending -> sent | failed |
ambiguous, or skipped with a reason (no consent, suppressed, capped, stale, no address). The
idempotency key is the nudge id; 'sending' is committed, with the time, before a provider is
called, so a crash can never lead to a blind second send:

- a claim older than the lease (the sender died mid-call) becomes ambiguous;
- an ambiguous nudge is looked up at the provider after ``reconcile_after_s``: found, it is
  sent; not found, it is pending again; when the provider cannot tell, it stays ambiguous
  for a person (``engage nudges``).

With no provider for a channel (the embedded default) the message is written to the outbox
in the transaction that marks it sent, so it happens exactly once. Every decision is also a
``message.status`` event in the ledger (same transaction), for analysts and scoring.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import cast
from urllib.parse import quote
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy.orm import Session, sessionmaker

from consumers.messages import Lookup, OutgoingMessage, Sender, SendError
from consumers.metrics import SENDER_CALLS, SENDER_SECONDS
from consumers.policy import ChannelPolicy, SendDecision, cap_window_start, decide, zone_of
from consumers.ratelimit import RateLimit
from consumers.rendering import TemplateBook
from consumers.repository import (
    Settled,
    claim_nudges,
    consented,
    contacts,
    due_nudges,
    expire_claims,
    lock_supporters,
    nudges_to_reconcile,
    recent_sends,
    renew_claim,
    settle_claimed,
    settle_nudge,
    status_row,
    survivors_of,
    write_outbox,
)
from infra.consent import consent_record, contact_key, suppress, suppressed
from infra.db import Nudge, Supporter
from infra.outbox import ledger_row
from schemas.events import ConsentChanged, MessageState
from schemas.identity import opt_out_token

log = structlog.get_logger(__name__)
TWILIO_OPTED_OUT = 21610
UNLIMITED = ChannelPolicy(quiet=None, stale_after=timedelta(days=36500))


@dataclass(frozen=True)
class SendingPolicy:
    """Channel policies, the zone of supporters with none, and the retry and lease timings.

    The constructor's default limits nothing (tests, scripts); ``engage`` builds it from the
    settings: 21:00-09:00 quiet hours for SMS in Europe/London, caps a day and a week.
    """

    channels: dict[str, ChannelPolicy] = field(default_factory=dict)
    default_zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("Europe/London"))
    max_attempts: int = 6
    backoff_s: float = 30.0
    lease_s: float = 120.0
    reconcile_after_s: float = 900.0

    def channel(self, name: str) -> ChannelPolicy:
        return self.channels.get(name, UNLIMITED)

    def retry_delay(self, attempt: int, retry_after_s: float | None) -> float:
        """Exponential from ``backoff_s`` (attempt 1) up to an hour; never less than the
        provider's ``Retry-After``."""
        delay = min(3600.0, self.backoff_s * 2.0 ** max(0, attempt - 1))
        return max(delay, retry_after_s or 0.0)


def _result_class(exc: SendError) -> str:
    """A refused send's class for ``engage_sender_calls``: ambiguous, retryable or refused."""
    if exc.ambiguous:
        return "ambiguous"
    return "retryable" if exc.retryable else "refused"


@dataclass
class _Plan:
    """What to do with one due nudge, worked out before any write lock is taken."""

    nudge: Nudge
    message: OutgoingMessage | None
    address: str | None = None
    zone: ZoneInfo | None = None
    status: str = "ready"
    reason_code: str | None = None
    reason: str | None = None


@dataclass
class Dispatcher:
    sessions: sessionmaker[Session]
    templates: TemplateBook
    senders: dict[str, Sender]
    org_name: str
    public_url: str
    link_key: str = field(default="", repr=False)
    """Signs the opt-out links and keys the suppression list (the identity key)."""
    policy: SendingPolicy = field(default_factory=SendingPolicy)
    limits: dict[str, RateLimit] = field(default_factory=dict)
    """Per channel: the provider's rate limit."""
    sms_opt_out_link: bool = False
    """The SMS sender is one-way (alphanumeric): end texts with a short opt-out link, not
    "Reply STOP"."""
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    # --- sending -------------------------------------------------------------------------

    def dispatch_pending(self, limit: int = 500) -> int:
        """Claim and settle up to ``limit`` due nudges; return how many were claimed."""
        return len(self._dispatch(limit, None))

    def dispatch(self, nudge_id: str) -> str | None:
        """Settle one nudge if it is due; its new status, or None when it was not due."""
        statuses = self._dispatch(1, [nudge_id])
        return statuses[0] if statuses else None

    def _dispatch(self, limit: int, nudge_ids: list[str] | None) -> list[str]:
        """Render outside any write lock; then one short transaction claims the nudges,
        checks consent, the suppression list, quiet hours and caps, and settles everything
        but provider sends; each provider call's result is a transaction of its own."""
        now = self.clock()
        with self.sessions() as session:
            nudges = due_nudges(session, now, limit, nudge_ids)
            people = contacts(session, [n.supporter_id for n in nudges])
            plans = [self._plan(n, people.get(n.supporter_id)) for n in nudges]
        if not plans:
            return []
        statuses: dict[str, str] = {}
        to_send: list[tuple[_Plan, Sender]] = []
        settled: list[tuple[_Plan, Settled]] = []
        outboxed = 0
        with self.sessions.begin() as session:
            lock_supporters(session, sorted({p.nudge.supporter_id for p in plans}))
            pairs = [(p.nudge.supporter_id, p.nudge.channel) for p in plans]
            since = min(cap_window_start(now, p.zone or self.policy.default_zone) for p in plans)
            sent = recent_sends(session, pairs, since)
            claimed = claim_nudges(session, [p.nudge.nudge_id for p in plans], now)
            granted = consented(session, pairs)
            blocked = suppressed(
                session,
                self.link_key,
                [(p.nudge.channel, p.address) for p in plans if p.address],
            )
            # The loop reads nothing it writes: the outbox and ledger rows it adds are
            # flushed once, at the commit, not before each nudge's update (the write lock
            # is held meanwhile, and every ingest and sink waits for it on SQLite).
            session.autoflush = False
            for plan in plans:
                nudge = plan.nudge
                if nudge.nudge_id not in claimed:
                    continue
                pair = (nudge.supporter_id, nudge.channel)
                if plan.status == "ready":
                    self._check(plan, pair in granted, (nudge.channel, plan.address) in blocked)
                if plan.status == "ready":
                    decision = decide(
                        self.policy.channel(nudge.channel),
                        nudge.channel,
                        # Planned when the consumer stored it (a late event's nudge is
                        # planned late; the playbook's stale_after_hours judged that already).
                        max(nudge.requested_at, nudge.created_at),
                        now,
                        plan.zone or self.policy.default_zone,
                        sent.get(pair, []),
                    )
                    self._apply(plan, decision)
                if plan.status == "ready":
                    sent.setdefault(pair, []).append(now)
                    sender = self.senders.get(nudge.channel)
                    if sender is not None:
                        to_send.append((plan, sender))
                        continue
                    assert plan.message is not None
                    write_outbox(session, plan.message, now)
                    outboxed += 1
                    plan.status = "sent"
                settled.append((plan, self._settled(plan, now)))
            # One statement settles them all and the status events go in one insert at the
            # commit: no round trip per nudge while the write lock is held.
            settle_claimed(session, [outcome for _, outcome in settled])
            survivors = survivors_of(session, sorted({p.nudge.supporter_id for p, _ in settled}))
            session.add_all(
                status_row(
                    session,
                    plan.nudge,
                    cast(MessageState, outcome.status),
                    now,
                    outcome.reason_code,
                    plan.reason,
                    survivor=survivors[plan.nudge.supporter_id],
                )
                for plan, outcome in settled
            )
        if outboxed:  # committed: the local outbox is the sender of a channel with no provider
            SENDER_CALLS.labels("outbox", "sent").inc(outboxed)
        for plan, outcome in settled:
            statuses[plan.nudge.nudge_id] = outcome.status
            self._log_settled(plan.nudge, outcome.status, outcome.reason_code, plan.reason)
        for plan, sender in to_send:
            statuses[plan.nudge.nudge_id] = self._send(plan, sender, now)
        return [statuses[p.nudge.nudge_id] for p in plans if p.nudge.nudge_id in statuses]

    def _check(self, plan: _Plan, granted: bool, blocked: bool) -> None:
        channel = plan.nudge.channel
        if not granted:
            plan.status, plan.reason_code = "skipped", "no_consent"
            plan.reason = f"no {channel} consent"
        elif blocked:
            plan.status, plan.reason_code = "skipped", "suppressed"
            plan.reason = f"the {channel} address is on the suppression list"

    @staticmethod
    def _apply(plan: _Plan, decision: SendDecision) -> None:
        if decision.action == "send":
            return
        plan.status = "held" if decision.action == "hold" else "skipped"
        plan.reason_code, plan.reason = decision.reason_code, decision.reason
        plan.nudge.not_before = decision.not_before

    def _send(self, plan: _Plan, sender: Sender, claimed_at: datetime) -> str:
        """Call the provider (after its rate limit) and record what it said; only while the
        claim made at ``claimed_at`` is still this sender's."""
        nudge, message = plan.nudge, plan.message
        assert message is not None
        limit = self.limits.get(nudge.channel)
        if limit is not None:
            limit.acquire()
        with self.sessions.begin() as session:
            if not renew_claim(session, nudge.nudge_id, claimed_at, self.clock()):
                log.warning("nudge.claim_lost", nudge_id=nudge.nudge_id)
                return "claim_lost"
        started = time.perf_counter()
        try:
            result = sender.send(message)
        except SendError as exc:
            SENDER_SECONDS.labels(sender.provider).observe(time.perf_counter() - started)
            SENDER_CALLS.labels(sender.provider, _result_class(exc)).inc()
            return self._refused(nudge, plan.address, sender, exc)
        SENDER_SECONDS.labels(sender.provider).observe(time.perf_counter() - started)
        SENDER_CALLS.labels(sender.provider, "sent").inc()
        with self.sessions.begin() as session:
            return self._settle(
                session,
                nudge,
                "sent",
                self.clock(),
                provider=result.provider,
                provider_message_id=result.message_id,
            )

    def _refused(self, nudge: Nudge, address: str | None, sender: Sender, exc: SendError) -> str:
        now = self.clock()
        with self.sessions.begin() as session:
            if exc.ambiguous:
                return self._settle(
                    session,
                    nudge,
                    "ambiguous",
                    now,
                    "no_answer",
                    str(exc),
                    provider=sender.provider,
                )
            attempts = nudge.attempts + 1
            if exc.retryable and attempts < self.policy.max_attempts:
                delay = self.policy.retry_delay(attempts, exc.retry_after_s)
                if exc.retry_after_s is not None and nudge.channel in self.limits:
                    self.limits[nudge.channel].pause(exc.retry_after_s)
                retry_at = now + timedelta(seconds=delay)
                reason = (
                    f"{exc}; attempt {attempts} of {self.policy.max_attempts}, "
                    f"next at {retry_at:%H:%M:%S} UTC"
                )
                moved = settle_nudge(
                    session,
                    nudge.nudge_id,
                    "pending",
                    reason_code="retrying",
                    reason=reason,
                    not_before=retry_at,
                    attempts=attempts,
                    expect=("sending",),
                )
                if moved:  # analysts see each refused attempt, and why
                    error_code = str(exc.code or exc.status or "") or None
                    session.add(
                        status_row(
                            session,
                            nudge,
                            "retrying",
                            now,
                            "retrying",
                            reason,
                            sender.provider,
                            error_code=error_code,
                        )
                    )
                log.info("nudge.retry", nudge_id=nudge.nudge_id, attempt=attempts, delay_s=delay)
                return "pending"
            code = "provider_refused"
            if exc.code == TWILIO_OPTED_OUT and address:
                code = "opted_out"
                self._opted_out(session, nudge, address, now)
            elif exc.retryable:
                code = "gave_up"
            return self._settle(
                session,
                nudge,
                "failed",
                now,
                code,
                str(exc),
                provider=sender.provider,
                error_code=str(exc.code or exc.status or "") or None,
                attempts=attempts,
            )

    def _opted_out(self, session: Session, nudge: Nudge, address: str, now: datetime) -> None:
        """Twilio 21610: the number replied STOP to us. Suppress it, withdraw the consent."""
        source = "twilio_21610"
        suppress(session, self.link_key, "sms", address, "Twilio 21610: replied STOP", source, now)
        withdrawn = ConsentChanged(
            event_time=now,
            supporter_id=nudge.supporter_id,
            channel="sms",
            granted=False,
            source=source,
        )
        session.add(consent_record(withdrawn, now))
        session.add(ledger_row(withdrawn, now))

    # --- recovery ------------------------------------------------------------------------

    def reconcile(self, limit: int = 200) -> dict[str, int]:
        """Claims older than the lease become ambiguous if their provider call had begun, else
        pending again ("released"); ambiguous nudges old enough are looked up at their
        provider: sent when it has them, pending again when it has not."""
        now = self.clock()
        counts = {"expired": 0, "released": 0, "confirmed": 0, "resend": 0, "unknown": 0}
        with self.sessions.begin() as session:
            expired, counts["released"] = expire_claims(
                session, now - timedelta(seconds=self.policy.lease_s)
            )
            for nudge in expired:
                counts["expired"] += 1
                session.add(
                    status_row(session, nudge, "ambiguous", now, nudge.reason_code, nudge.reason)
                )
        cutoff = now - timedelta(seconds=self.policy.reconcile_after_s)
        with self.sessions() as session:
            waiting = nudges_to_reconcile(session, cutoff, limit)
            people = contacts(session, [n.supporter_id for n in waiting])
        for nudge in waiting:
            sender = self.senders.get(nudge.channel)
            plan = self._plan(nudge, people.get(nudge.supporter_id))
            if not isinstance(sender, Lookup) or plan.message is None:
                counts["unknown"] += 1
                continue
            since = (nudge.sending_since or nudge.updated_at) - timedelta(seconds=30)
            try:
                found = sender.find(plan.message, since)
            except SendError as exc:
                log.warning("nudge.lookup_failed", nudge_id=nudge.nudge_id, error=str(exc))
                counts["unknown"] += 1
                continue
            with self.sessions.begin() as session:
                if found is not None:
                    self._settle(
                        session,
                        nudge,
                        "sent",
                        self.clock(),
                        "confirmed",
                        "the provider's records show it was sent",
                        provider=found.provider,
                        provider_message_id=found.message_id,
                        expect=("ambiguous",),
                    )
                    counts["confirmed"] += 1
                else:
                    settle_nudge(
                        session,
                        nudge.nudge_id,
                        "pending",
                        reason_code="not_at_provider",
                        reason="the provider has no record of it: sending again",
                        attempts=nudge.attempts + 1,
                        expect=("ambiguous",),
                    )
                    counts["resend"] += 1
        if any(counts.values()):
            log.info("nudges.reconciled", **counts)
        return counts

    # --- pieces --------------------------------------------------------------------------

    def opt_out_url(self, nudge_id: str) -> str:
        token = opt_out_token(self.link_key, nudge_id)
        return f"{self.public_url}/unsubscribe/{quote(nudge_id, safe=':')}?t={token}"

    def opt_out_code(self, nudge_id: str) -> str:
        """A short code for the SMS opt-out link (``/o/{code}``): 10 base32 characters."""
        digest = hmac.new(
            self.link_key.encode(), f"sms-opt-out:{nudge_id}".encode(), hashlib.sha256
        )
        return base64.b32encode(digest.digest()).decode()[:10].lower()

    def _plan(self, nudge: Nudge, person: Supporter | None) -> _Plan:
        address = None
        if person is not None:
            address = person.email if nudge.channel == "email" else person.phone
        zone = zone_of(person.timezone if person else None, self.policy.default_zone)
        if person is None or not address:
            return _Plan(
                nudge, None, None, zone, "skipped", "no_address", f"no {nudge.channel} address"
            )
        context = {k: str(v) for k, v in nudge.context.items()}
        if person.first_name:
            context["first_name"] = person.first_name
        if person.area and "area" not in context:
            context["area"] = person.area
        nudge.recipient = contact_key(self.link_key, nudge.channel, address)
        sms_opt_out = None
        if nudge.channel == "sms" and self.sms_opt_out_link:
            nudge.opt_out_code = self.opt_out_code(nudge.nudge_id)
            sms_opt_out = f"Opt out: {self.public_url}/o/{nudge.opt_out_code}"
        try:
            message = self.templates.render(
                nudge.template,
                nudge.channel,
                context,
                nudge_id=nudge.nudge_id,
                to=address,
                org_name=self.org_name,
                opt_out_url=self.opt_out_url(nudge.nudge_id),
                sms_opt_out=sms_opt_out,
            )
        except (KeyError, ValueError) as exc:
            return _Plan(
                nudge, None, address, zone, "failed", "render_failed", f"could not render: {exc}"
            )
        return _Plan(nudge, message, address, zone)

    @staticmethod
    def _settled(plan: _Plan, now: datetime) -> Settled:
        """What ``_settle`` would write for a claimed nudge settled without a provider call."""
        nudge = plan.nudge
        return Settled(
            nudge.nudge_id,
            plan.status,
            plan.reason_code,
            plan.reason,
            not_before=nudge.not_before if plan.status == "held" else None,
            sent_at=now if plan.status == "sent" else None,
            opt_out_code=nudge.opt_out_code,
            recipient=nudge.recipient,
        )

    @staticmethod
    def _log_settled(
        nudge: Nudge, status: str, reason_code: str | None, reason: str | None
    ) -> None:
        log.info(
            "nudge.dispatched",
            nudge_id=nudge.nudge_id,
            rule=nudge.rule,
            channel=nudge.channel,
            status=status,
            reason_code=reason_code,
            reason=reason,
        )

    def _settle(
        self,
        session: Session,
        nudge: Nudge,
        status: str,
        now: datetime,
        reason_code: str | None = None,
        reason: str | None = None,
        *,
        not_before: datetime | None = None,
        provider: str | None = None,
        provider_message_id: str | None = None,
        error_code: str | None = None,
        attempts: int | None = None,
        expect: Sequence[str] = ("sending",),
    ) -> str:
        """Write the nudge's new status and its message.status event, and log it once."""
        moved = settle_nudge(
            session,
            nudge.nudge_id,
            status,
            reason_code=reason_code,
            reason=reason,
            not_before=not_before,
            provider=provider,
            provider_message_id=provider_message_id,
            sent_at=now if status == "sent" else None,
            attempts=attempts,
            opt_out_code=nudge.opt_out_code,
            recipient=nudge.recipient,
            expect=expect,
        )
        if moved:
            state = cast(MessageState, status)
            session.add(
                status_row(
                    session,
                    nudge,
                    state,
                    now,
                    reason_code,
                    reason,
                    provider,
                    provider_message_id,
                    error_code,
                )
            )
        self._log_settled(nudge, status, reason_code, reason)
        return status
