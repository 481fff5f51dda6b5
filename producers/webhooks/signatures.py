"""Verifying provider requests: Twilio's X-Twilio-Signature over the public URL and the form,
SendGrid's ECDSA-signed Event Webhook and its freshness window."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import parse_qsl

from sendgrid.helpers.eventwebhook import EventWebhook
from twilio.request_validator import RequestValidator

MAX_FUTURE_SKEW_S = 60.0


def fresh(timestamp: int, now: datetime, max_age_s: float, skew_s: float = 60.0) -> bool:
    """Whether a signed timestamp (Unix seconds) is at most ``max_age_s`` old and at most
    ``skew_s`` ahead of ``now``: the signature does not expire by itself, so a captured
    request could otherwise be replayed for ever."""
    at = now.timestamp()
    return at - max_age_s <= timestamp <= at + skew_s


class FormParams(dict[str, list[str]]):
    """Form fields by name (each name's values in order), as Twilio's validator reads a
    multi-valued form: it calls ``getall``."""

    def getall(self, name: str) -> list[str]:
        return self[name]

    def first(self, name: str) -> str | None:
        values = self.get(name)
        return values[0] if values else None


def parse_form(body: bytes) -> FormParams | None:
    """An ``application/x-www-form-urlencoded`` body (UTF-8), or None if it is not one."""
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=500,
        )
    except (UnicodeDecodeError, ValueError):
        return None
    params = FormParams()
    for name, value in pairs:
        params.setdefault(name, []).append(value)
    return params


def twilio_signature_valid(auth_token: str, url: str, params: FormParams, signature: str) -> bool:
    """Twilio's own check of ``X-Twilio-Signature`` (HMAC-SHA1 of the URL and sorted fields);
    anything it cannot handle counts as invalid."""
    try:
        return bool(RequestValidator(auth_token).validate(url, params, signature))
    except Exception:  # a forged request must never become a 500
        return False


def sendgrid_signature_valid(
    verifier: EventWebhook, body: bytes, signature: str, timestamp: str
) -> bool:
    """SendGrid's own check of the signed Event Webhook over timestamp and the raw body. It
    raises on a malformed base64 signature, a body that is not UTF-8 and other garbage: all
    of that counts as invalid."""
    try:
        return bool(verifier.verify_signature(body.decode("utf-8"), signature, timestamp))
    except Exception:  # see above: never a 500
        return False
