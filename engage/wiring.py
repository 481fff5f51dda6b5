"""Builds the parts every entry point shares, once, from the settings: the database sessions,
the stream's engine (its playbook checked against the templates), the sending policy and the
dispatcher. The CLI, the supervisor's children, the web app, the demo and the benchmarks all
call these, so each part is made one way."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.orm import Session, sessionmaker

from consumers.dispatch import Dispatcher, SendingPolicy
from consumers.messages import Sender
from consumers.policy import ChannelPolicy, QuietHours
from consumers.providers import SendGridEmailSender, TwilioSmsSender
from consumers.ratelimit import RateLimit
from consumers.rendering import TemplateBook
from infra.db import make_engine, session_factory
from infra.settings import Settings
from streams.analytics import AnalyticsKey
from streams.engagement import Engine
from streams.playbook import DEFAULT_PLAYBOOK, load_playbook


def analytics_key(settings: Settings) -> AnalyticsKey:
    """The analysts' pseudonym key (generated under home unless set) and its id."""
    return AnalyticsKey(settings.secret("analytics_key"), settings.analytics_key_id)


def sessions(settings: Settings) -> sessionmaker[Session]:
    return session_factory(make_engine(settings.sqlalchemy_url))


def engine(settings: Settings) -> Engine:
    """The stream's engine, from the configured playbook."""
    return engine_for(settings.playbook)


def engine_for(playbook: Path | str | None = None) -> Engine:
    """An engine for ``playbook`` (default: the shipped one), checked against the templates:
    a rule that sends a template nobody wrote is refused when the playbook loads."""
    return Engine(load_playbook(playbook or DEFAULT_PLAYBOOK, TemplateBook().names))


def sending_policy(settings: Settings) -> SendingPolicy:
    """Quiet hours, staleness, caps and retries per channel, as the settings say; a setting
    that does not parse stops the program with its reason."""
    try:
        zone = ZoneInfo(settings.default_timezone)
        channels = {
            name: ChannelPolicy(
                quiet=QuietHours.parse(getattr(settings, f"{name}_quiet_hours")),
                stale_after=timedelta(hours=getattr(settings, f"{name}_stale_after_hours")),
                per_day=getattr(settings, f"{name}_cap_per_day"),
                per_week=getattr(settings, f"{name}_cap_per_week"),
            )
            for name in ("email", "sms")
        }
    except (ValueError, ZoneInfoNotFoundError) as exc:
        raise SystemExit(f"sending policy: {exc}") from None
    return SendingPolicy(
        channels=channels,
        default_zone=zone,
        max_attempts=settings.send_max_attempts,
        backoff_s=settings.send_backoff_s,
        lease_s=settings.send_lease_s,
        reconcile_after_s=settings.reconcile_after_s,
    )


def dispatcher(settings: Settings) -> Dispatcher:
    """The sender: SendGrid and Twilio where their keys are set, the local outbox otherwise."""
    senders: dict[str, Sender] = {}
    limits: dict[str, RateLimit] = {}
    if settings.sendgrid_api_key:
        senders["email"] = SendGridEmailSender(
            settings.sendgrid_api_key.get_secret_value(),
            settings.sendgrid_from_email,
            settings.org_name,
            host=settings.sendgrid_host,
            timeout_s=settings.provider_timeout_s,
        )
        limits["email"] = RateLimit(settings.sendgrid_rate_per_s)
    if settings.twilio_account_sid and settings.twilio_auth_token:
        senders["sms"] = TwilioSmsSender(
            settings.twilio_account_sid,
            settings.twilio_auth_token.get_secret_value(),
            settings.twilio_from_number,
            base_url=settings.twilio_base_url,
            timeout_s=settings.provider_timeout_s,
            status_callback=f"{settings.public_url.rstrip('/')}/webhooks/twilio/status",
        )
        limits["sms"] = RateLimit(settings.twilio_rate_per_s)
    return Dispatcher(
        sessions(settings),
        TemplateBook(),
        senders,
        settings.org_name,
        settings.public_url,
        link_key=settings.secret("identity_key"),
        policy=sending_policy(settings),
        limits=limits,
        # An alphanumeric sender ID ("GRASSROOTS") is one-way: nobody can reply STOP to it.
        sms_opt_out_link=not settings.twilio_from_number.startswith("+"),
    )
