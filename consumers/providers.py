"""Real Sender adapters: SendGrid email and Twilio SMS through their SDKs, errors as SendError."""

from __future__ import annotations

import email.utils
import http.client
import json
import math
import threading
import time
import urllib.error
from datetime import datetime
from typing import Any, Protocol

import requests
import sendgrid
from python_http_client.exceptions import HTTPError
from sendgrid.helpers.mail import CustomArg, From, Header, Mail, To
from twilio.base import values
from twilio.base.exceptions import TwilioException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client as TwilioClient
from urllib3.exceptions import MaxRetryError, NewConnectionError

from consumers.messages import OutgoingMessage, SendError, SendResult

TWILIO_OPTED_OUT = 21610
"""Twilio error: the recipient replied STOP to this sender; never retry."""
TWILIO_TOO_MANY_REQUESTS = 20429
"""Twilio error: rate limited; always safe to retry."""
_RETRYABLE_STATUSES = frozenset({408, 429})


class _Headers(Protocol):
    def get(self, name: str, /) -> str | None: ...


def _retryable_status(status: int) -> bool:
    return status in _RETRYABLE_STATUSES or 500 <= status <= 599


def retry_after_seconds(headers: _Headers | None, now: float) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date) or ``X-RateLimit-Reset``.

    ``now`` is a Unix time in seconds; the answer is never negative, None when neither header
    is present or readable.
    """
    if headers is None:
        return None
    value = headers.get("Retry-After")
    if value is not None:
        value = value.strip()
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds):
            return max(0.0, seconds)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            when = None
        if when is not None and when.tzinfo is not None:
            return max(0.0, when.timestamp() - now)
    reset = headers.get("X-RateLimit-Reset")
    if reset is not None:
        try:
            seconds = float(reset) - now
        except ValueError:
            return None
        return max(0.0, seconds) if math.isfinite(seconds) else None
    return None


def _sendgrid_error_fields(body: Any) -> list[str]:
    """The ``field`` names SendGrid gives for a refusal; its free-text messages may quote data."""
    try:
        errors = json.loads(body)["errors"]
        return sorted({str(e["field"]) for e in errors if isinstance(e, dict) and e.get("field")})
    except (TypeError, ValueError, KeyError):
        return []


class SendGridEmailSender:
    """Sends email with SendGrid's v3 Mail Send API (no retries, no deduplication there)."""

    provider = "sendgrid"

    def __init__(
        self,
        api_key: str,
        from_email: str,
        from_name: str,
        host: str = "https://api.sendgrid.com",
        timeout_s: float = 10.0,
    ) -> None:
        self._client = sendgrid.SendGridAPIClient(api_key, host=host)
        # The SDK waits for ever by default; the timeout is copied into every sub-client.
        self._client.client.timeout = timeout_s
        self._from = From(from_email, from_name)

    def _mail(self, message: OutgoingMessage) -> Mail:
        mail = Mail(
            from_email=self._from,
            to_emails=To(message.to),
            subject=message.subject,
            plain_text_content=message.body,
            html_content=message.html,
        )
        for name, value in message.headers.items():
            mail.add_header(Header(name, value))
        # Echoed back in Event Webhook events; no personal data here.
        mail.add_custom_arg(CustomArg("nudge_id", message.nudge_id))
        return mail

    def send(self, message: OutgoingMessage) -> SendResult:
        if message.channel != "email":
            raise ValueError(f"SendGridEmailSender cannot send {message.channel!r} messages")
        mail = self._mail(message)
        try:
            response = self._client.send(mail)
        except HTTPError as exc:
            status = int(exc.status_code)
            retryable = _retryable_status(status)
            fields = _sendgrid_error_fields(exc.body)
            detail = f"; fields: {', '.join(fields)}" if fields else ""
            raise SendError(
                f"SendGrid refused nudge {message.nudge_id}: HTTP {status}{detail}",
                retryable=retryable,
                status=status,
                retry_after_s=retry_after_seconds(exc.headers, time.time()) if retryable else None,
            ) from None
        except urllib.error.URLError as exc:
            # Raised while connecting or writing the request: SendGrid did not get it.
            raise SendError(
                f"SendGrid unreachable for nudge {message.nudge_id}: {_reason(exc.reason)}",
                retryable=True,
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            # Raised while waiting for the answer (TimeoutError, reset, bad status line).
            raise SendError(
                f"no answer from SendGrid for nudge {message.nudge_id} after sending: "
                f"{_reason(exc)}; it may have been accepted",
                retryable=True,
                ambiguous=True,
            ) from None
        message_id = response.headers.get("X-Message-Id") if response.headers else None
        return SendResult(provider=self.provider, message_id=message_id)

    def find(self, message: OutgoingMessage, since: datetime) -> SendResult | None:
        """Ask the Email Activity API for the message by its ``nudge_id`` custom argument.

        That API is a paid add-on: without it SendGrid answers 403 and the nudge stays
        ambiguous for a person to settle (``engage nudges``).
        """
        query = f"unique_args['nudge_id']=\"{message.nudge_id}\""
        try:
            response = self._client.client.messages.get(query_params={"query": query, "limit": 10})
            found = json.loads(response.body).get("messages") or []
        except HTTPError as exc:
            raise SendError(
                f"SendGrid lookup of nudge {message.nudge_id}: HTTP {exc.status_code}",
                retryable=_retryable_status(int(exc.status_code)),
                status=int(exc.status_code),
            ) from None
        except (OSError, http.client.HTTPException, ValueError, AttributeError) as exc:
            raise SendError(
                f"SendGrid lookup of nudge {message.nudge_id} failed: {_reason(exc)}",
                retryable=True,
            ) from None
        for item in found:
            if isinstance(item, dict) and item.get("msg_id"):
                # The activity id extends the X-Message-Id a send returns; keep that part.
                message_id = str(item["msg_id"]).split(".", 1)[0]
                return SendResult(provider=self.provider, message_id=message_id)
        return None


class TwilioSmsSender:
    """Sends SMS with Twilio's Messages API (no idempotency key there)."""

    provider = "twilio"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        from_number: str,
        base_url: str | None = None,
        timeout_s: float = 10.0,
        status_callback: str | None = None,
    ) -> None:
        """``status_callback``: the public URL of ``/webhooks/twilio/status``, so delivery
        reports come back for every message."""
        self._status_callback = status_callback
        self._http = _HeadersKeepingClient(timeout=timeout_s)
        self._client = TwilioClient(
            account_sid,
            auth_token,
            http_client=self._http,
            # A non-empty mapping, so the SDK does not read TWILIO_REGION / TWILIO_EDGE from
            # os.environ (an empty one falls back to it); configuration comes from Settings.
            environment={"TWILIO_REGION": "", "TWILIO_EDGE": ""},
        )
        if base_url is not None:
            self._client.api.base_url = base_url
        self._from_number = from_number

    def send(self, message: OutgoingMessage) -> SendResult:
        if message.channel != "sms":
            raise ValueError(f"TwilioSmsSender cannot send {message.channel!r} messages")
        try:
            created = self._client.messages.create(
                to=message.to,
                from_=self._from_number,
                body=message.body,
                status_callback=self._status_callback or values.unset,
            )
        except TwilioException as exc:
            error = _twilio_error(exc, message.nudge_id)
            if error.retryable:
                error.retry_after_s = retry_after_seconds(self._http.last_headers(), time.time())
            raise error from None
        except requests.ConnectTimeout:
            raise SendError(
                f"Twilio unreachable for nudge {message.nudge_id}: connect timed out",
                retryable=True,
            ) from None
        except requests.ReadTimeout:
            raise SendError(
                f"no answer from Twilio for nudge {message.nudge_id} after sending: "
                "read timed out; it may have been accepted",
                retryable=True,
                ambiguous=True,
            ) from None
        except requests.ConnectionError as exc:
            if _never_connected(exc):
                raise SendError(
                    f"Twilio unreachable for nudge {message.nudge_id}: connection failed",
                    retryable=True,
                ) from None
            raise SendError(
                f"no answer from Twilio for nudge {message.nudge_id} after sending: "
                "connection dropped; it may have been accepted",
                retryable=True,
                ambiguous=True,
            ) from None
        sid = created.sid
        return SendResult(provider=self.provider, message_id=str(sid) if sid else None)

    def find(self, message: OutgoingMessage, since: datetime) -> SendResult | None:
        """Look for a message to the same number, from our number, with the same body,
        created at or after ``since`` (Twilio has no key of ours to search by)."""
        try:
            # Not filtered on DateSent: a message Twilio still queues has none yet.
            listed = self._client.messages.list(to=message.to, from_=self._from_number, limit=50)
        except TwilioException as exc:
            raise _twilio_error(exc, message.nudge_id) from None
        except requests.RequestException as exc:
            raise SendError(
                f"Twilio lookup of nudge {message.nudge_id} failed: {_reason(exc)}",
                retryable=True,
            ) from None
        for item in listed:
            created = item.date_created
            if item.body == message.body and (created is None or created >= since):
                return SendResult(provider=self.provider, message_id=str(item.sid))
        return None


class _HeadersKeepingClient(TwilioHttpClient):  # type: ignore[misc]  # untyped SDK class
    """Twilio's HTTP client, keeping the last response's headers (per thread): its exceptions
    carry none, and a 429's ``Retry-After`` should pause the channel."""

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self._seen = threading.local()

    def request(self, *args: Any, **kwargs: Any) -> Any:
        self._seen.headers = None
        response = super().request(*args, **kwargs)
        self._seen.headers = response.headers
        return response

    def last_headers(self) -> _Headers | None:
        headers: _Headers | None = getattr(self._seen, "headers", None)
        return headers


def _twilio_error(exc: TwilioException, nudge_id: str) -> SendError:
    """Map a Twilio refusal; its ``msg`` can quote the phone number, so only numbers are kept."""
    status: int | None = getattr(exc, "status", None)
    raw_code = getattr(exc, "code", None)
    # Without an error body the SDK repeats the HTTP status as the code.
    code = raw_code if isinstance(raw_code, int) and raw_code != status else None
    if code == TWILIO_OPTED_OUT:
        retryable = False
    elif code == TWILIO_TOO_MANY_REQUESTS:
        retryable = True
    else:
        retryable = status is not None and _retryable_status(status)
    what = f"HTTP {status}" if status is not None else type(exc).__name__
    if code is not None:
        what += f", error {code}"
    if code == TWILIO_OPTED_OUT:
        what += " (recipient replied STOP)"
    return SendError(
        f"Twilio refused nudge {nudge_id}: {what}", retryable=retryable, status=status, code=code
    )


def _never_connected(exc: requests.ConnectionError) -> bool:
    """True when requests failed before sending anything (refused, DNS): safe to resend."""
    reason = exc.args[0] if exc.args else None
    return isinstance(reason, MaxRetryError) and isinstance(reason.reason, NewConnectionError)


def _reason(exc: object) -> str:
    """A short cause for an error message: the class name, with no URL or address."""
    return type(exc).__name__ if isinstance(exc, BaseException) else str(exc)
