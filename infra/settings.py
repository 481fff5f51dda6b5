"""The one settings object, read from ENGAGE_* environment variables by the entry point."""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535, description="0 picks a free port.")
    api_token: SecretStr | None = Field(
        default=None, description="Bearer token for the ingest API; generated under home if unset."
    )
    identity_key: SecretStr | None = Field(
        default=None, description="Key of the supporter-id hash; generated under home if unset."
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

    log_level: str = "info"
    log_json: bool | None = Field(default=None, description="Force JSON logs (default: not a TTY).")

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home.resolve() / 'engage.db'}"

    @property
    def run_file(self) -> Path:
        return self.home / "run.json"

    def secret(self, name: str) -> str:
        """Return the named secret, generating and keeping it under ``home`` when unset."""
        value: SecretStr | None = getattr(self, name)
        if value is not None:
            return value.get_secret_value()
        path = self.home / name
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip()
