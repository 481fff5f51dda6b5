"""The sending port: the message value, the provider's answer, the error, the Sender protocol."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

Channel = Literal["email", "sms"]
CHANNELS: tuple[Channel, ...] = ("email", "sms")

_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_LINE_BREAK = re.compile(r"[\r\n]")


@dataclass(frozen=True)
class OutgoingMessage:
    """One rendered message, ready for a provider. ``nudge_id`` is its idempotency key.

    Checked on construction (the errors never quote the recipient): an email has a one-line
    subject and an address with an ``@``; an SMS has no subject or HTML and an E.164 number;
    header names and values hold no line breaks.
    """

    nudge_id: str
    channel: Channel
    to: str
    subject: str | None
    body: str
    html: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ValueError(f"unknown channel {self.channel!r}; expected one of {CHANNELS}")
        if not self.nudge_id:
            raise ValueError("nudge_id is required")
        if not self.body.strip():
            raise ValueError(f"nudge {self.nudge_id}: empty body")
        for name, value in self.headers.items():
            if _LINE_BREAK.search(name) or _LINE_BREAK.search(value):
                raise ValueError(f"nudge {self.nudge_id}: line break in header {name!r}")
        if self.channel == "email":
            if not self.subject or _LINE_BREAK.search(self.subject):
                raise ValueError(f"nudge {self.nudge_id}: an email needs a one-line subject")
            if "@" not in self.to or _LINE_BREAK.search(self.to):
                raise ValueError(f"nudge {self.nudge_id}: recipient is not an email address")
        else:
            if self.subject is not None or self.html is not None:
                raise ValueError(f"nudge {self.nudge_id}: an SMS has no subject or HTML")
            if not _E164.match(self.to):
                raise ValueError(f"nudge {self.nudge_id}: recipient is not an E.164 number")


@dataclass(frozen=True)
class SendResult:
    """What the provider said on acceptance: its name and its id for the message, if any."""

    provider: str
    message_id: str | None


class SendError(Exception):
    """A provider refused or could not be reached. The message never names the recipient.

    ``retryable``: the same request may succeed later (rate limit, provider fault, network).
    ``ambiguous``: the request was sent but no answer came back (for example a read timeout),
    so the provider may have accepted it; neither provider deduplicates, so retrying may send
    the message twice. ``status`` is the HTTP status, ``code`` the provider's error code (Twilio
    21610: the recipient replied STOP), ``retry_after_s`` the provider's requested wait.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        code: int | None = None,
        retry_after_s: float | None = None,
        ambiguous: bool = False,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.code = code
        self.retry_after_s = retry_after_s
        self.ambiguous = ambiguous


class Sender(Protocol):
    """Delivers one message; raises ``SendError`` when the provider does not accept it."""

    provider: str

    def send(self, message: OutgoingMessage) -> SendResult: ...


@runtime_checkable
class Lookup(Protocol):
    """A sender that can say whether the provider took a message, for ambiguous sends."""

    def find(self, message: OutgoingMessage, since: datetime) -> SendResult | None:
        """The provider's record of ``message`` sent at or after ``since``, or None when it
        has none; raises ``SendError`` when it cannot tell (unreachable, lookups refused)."""
        ...
