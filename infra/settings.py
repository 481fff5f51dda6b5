"""The one settings object, read from ENGAGE_* environment variables by the entry point."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.catalogue import RETENTION_DEFAULT_DAYS, TopicSpec, with_retention

_KEEP_FOREVER = "0: keep forever."


class Settings(BaseSettings):
    """Everything configurable. Built in ``main()`` and passed down; never at import time."""

    model_config = SettingsConfigDict(env_prefix="ENGAGE_", extra="ignore")

    home: Path = Field(default=Path(".engage"), description="State directory (SQLite, run file).")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default SQLite under home."
    )
    kafka_bootstrap: str | None = Field(
        default=None, description="Use this Kafka instead of starting the embedded broker."
    )
    topic_partitions: int = Field(default=4, ge=1, le=256)
    topic_replication_factor: int = Field(
        default=1, ge=1, le=16, description="Copies of each partition (3 on a production cluster)."
    )
    topic_min_insync_replicas: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Copies that must have a write before acks=all succeeds (2 with 3 copies).",
    )
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535, description="0 picks a free port.")
    metrics_host: str = Field(
        default="127.0.0.1", description="Where a worker process serves /metrics and /healthz."
    )
    metrics_port: int = Field(
        default=9100,
        ge=0,
        le=65535,
        description="Port of /metrics and /healthz of a relay, stream or consume process (0: any "
        "free one; the API serves both on its own port). `engage up` gives each child its own: "
        "free loopback ports, or this port and the next ones when set.",
    )
    health_stale_s: float = Field(
        default=60.0,
        gt=0,
        description="A worker with lag and no batch for this long, or with no partitions this "
        "long while its group's lag goes unworked, answers /healthz with 503.",
    )
    api_token: SecretStr | None = Field(
        default=None, description="Bearer token for the ingest API; generated under home if unset."
    )
    identity_key: SecretStr | None = Field(
        default=None, description="Key of the supporter-id hash; generated under home if unset."
    )
    analytics_key: SecretStr | None = Field(
        default=None,
        description="Key of the analysts' pseudonyms on the analytics.* topics (HMAC-SHA256);"
        " generated under home if unset. Rotate it with analytics_key_id (docs/analysts.md).",
    )
    analytics_key_id: str = Field(
        default="k1",
        min_length=1,
        max_length=40,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Which analytics key is in use: carried on every analytics record as key_id.",
    )
    max_batch: int = Field(default=1000, ge=1, description="Most events in one ingest request.")
    playbook: Path | None = Field(
        default=None,
        description="Playbook YAML (scoring, ladder, rules); default: the shipped one.",
    )
    stream_workers: int = Field(
        default=1, ge=1, le=64, description="Stream worker processes `engage up` runs (one group)."
    )
    lapse_check_seconds: float = Field(
        default=60.0, gt=0, description="How often the stream looks for lapses and falling rungs."
    )
    stream_snapshot_seconds: float = Field(
        default=30.0, gt=0, description="How often the stream saves its state (snapshots)."
    )
    org_name: str = "Grassroots Together"
    public_url: str = Field(default="http://127.0.0.1:8000", description="Base of opt-out links.")

    sendgrid_api_key: SecretStr | None = None
    sendgrid_host: str = "https://api.sendgrid.com"
    sendgrid_from_email: str = "hello@example.org"
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_from_number: str = "+447700900000"
    twilio_base_url: str | None = None
    provider_timeout_s: float = Field(default=10.0, gt=0)
    sendgrid_webhook_public_key: str | None = Field(
        default=None,
        description="Base64 ECDSA public key of the signed Event Webhook; unset: endpoint refuses.",
    )
    webhook_max_age_s: float = Field(
        default=600.0, gt=0, description="Oldest signed SendGrid webhook timestamp accepted."
    )

    # Sending policy. Quiet hours are local "HH:MM-HH:MM" in the supporter's zone (empty: none).
    default_timezone: str = Field(
        default="Europe/London", description="Zone of supporters whose own is not known."
    )
    sms_quiet_hours: str = "21:00-09:00"
    email_quiet_hours: str = ""
    sms_stale_after_hours: float = Field(
        default=12.0, gt=0, description="An SMS planned longer ago than this is dropped, not sent."
    )
    email_stale_after_hours: float = Field(default=48.0, gt=0)
    sms_cap_per_day: int = Field(default=1, ge=0, description="0: no cap.")
    sms_cap_per_week: int = Field(default=3, ge=0)
    email_cap_per_day: int = Field(default=2, ge=0)
    email_cap_per_week: int = Field(default=5, ge=0)
    send_max_attempts: int = Field(
        default=6, ge=1, description="Tries of a retryable refusal (429, 5xx) before failed."
    )
    send_backoff_s: float = Field(
        default=30.0, gt=0, description="First retry delay, doubled per attempt up to an hour."
    )
    send_lease_s: float = Field(
        default=120.0,
        gt=0,
        description="A nudge claimed longer ago than this by a sender that never answered is "
        "marked ambiguous (its sender died mid-call); keep it well above provider_timeout_s.",
    )
    reconcile_after_s: float = Field(
        default=900.0,
        gt=0,
        description="How long after the send an ambiguous nudge is looked up at the provider.",
    )
    sendgrid_rate_per_s: float = Field(default=50.0, gt=0)
    twilio_rate_per_s: float = Field(
        default=10.0, gt=0, description="Messages a second; a UK long code takes about 10."
    )

    # The organisers' follow-up queue (docs/organisers.md).
    claim_minutes: int = Field(
        default=120,
        ge=1,
        le=7 * 24 * 60,
        description="How long an organiser's claim on a task lasts; then it is open again.",
    )
    organiser_session_hours: float = Field(
        default=12.0,
        gt=0,
        le=24 * 30,
        description="How long an organiser stays signed in (from sign-in; no sliding renewal).",
    )

    # Retention, in days (0: forever): why these defaults, see docs/privacy.md "Retention".
    retention_events_days: int = Field(
        default=RETENTION_DEFAULT_DAYS["events"],
        ge=0,
        description="What supporters did: the input topics and their ledger rows. " + _KEEP_FOREVER,
    )
    retention_scores_days: int = Field(
        default=RETENTION_DEFAULT_DAYS["scores"],
        ge=0,
        description="engagement.scored and ladder.changed. " + _KEEP_FOREVER,
    )
    retention_nudges_days: int = Field(
        default=RETENTION_DEFAULT_DAYS["nudges"],
        ge=0,
        description="Nudges after they were asked for, and message.status (topic and ledger). "
        + _KEEP_FOREVER,
    )
    retention_requests_days: int = Field(
        default=RETENTION_DEFAULT_DAYS["requests"],
        ge=0,
        description="nudge.requested and task.created (stored as nudges and tasks). "
        + _KEEP_FOREVER,
    )
    retention_deadletter_days: int = Field(
        default=RETENTION_DEFAULT_DAYS["deadletter"],
        ge=0,
        description="The deadletter topic and the notes of letters re-driven. " + _KEEP_FOREVER,
    )
    retention_tasks_days: int = Field(
        default=730, ge=0, description="Follow-up tasks after they were due. " + _KEEP_FOREVER
    )
    retention_outbox_days: int = Field(
        default=90,
        ge=0,
        description="The local outbox's copies of messages (address and body). " + _KEEP_FOREVER,
    )
    retention_consent_days: int = Field(
        default=2190,
        ge=0,
        description="Consent records superseded by a newer one (the newest is always kept). "
        + _KEEP_FOREVER,
    )
    retention_webhook_receipts_days: int = Field(
        default=30,
        ge=0,
        description="Provider webhook ids kept to ignore a retried delivery. " + _KEEP_FOREVER,
    )
    retention_check_hours: float = Field(
        default=24.0,
        gt=0,
        le=168,
        description="How often `engage up` applies retention (and once as it starts).",
    )

    log_level: str = "info"
    log_json: bool | None = Field(default=None, description="Force JSON logs (default: not a TTY).")

    def as_environment(self) -> dict[str, str]:
        """Every setting as the ENGAGE_* variable that gives it back, for a child process's
        environment (secrets included: never log it); unset optional settings are left out."""
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[f"ENGAGE_{name.upper()}"] = str(value)
        return env

    def retention_periods(self) -> dict[str, int]:
        """Days per topic retention period (``schemas.catalogue.RETENTION_DEFAULT_DAYS``)."""
        return {
            period: getattr(self, f"retention_{period}_days")
            for period in RETENTION_DEFAULT_DAYS
            if period != "forever"
        }

    def topics(self) -> tuple[TopicSpec, ...]:
        """The topic catalogue with these retention periods: what ``ensure_topics`` asks for."""
        return with_retention(self.retention_periods())

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home.resolve() / 'engage.db'}"

    @property
    def run_file(self) -> Path:
        return self.home / "run.json"

    def secret(self, name: str) -> str:
        """Return the named secret: the setting, or the file under ``home``, created (as
        ``ensure_secrets`` does) when missing."""
        value: SecretStr | None = getattr(self, name)
        if value is not None:
            return value.get_secret_value()
        path = self.home / name
        if not path.exists():
            create_secret_file(path)
        return path.read_text().strip()

    def ensure_secrets(self) -> None:
        """Create every generated secret that is neither set nor kept yet. The supervisor calls
        this before it starts any child, so all children read the same keys."""
        for name in GENERATED_SECRETS:
            if getattr(self, name) is None:
                create_secret_file(self.home / name)


GENERATED_SECRETS = ("api_token", "identity_key", "analytics_key")


def create_secret_file(path: Path) -> bool:
    """Write a new random secret to ``path`` unless it exists; False if another process got
    there first (its secret stands). The file is 0600 from its first byte and appears whole:
    written under a unique temporary name, then linked into place, which fails if it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    finally:
        temporary.unlink(missing_ok=True)
