"""The FastAPI router of the provider webhooks and its OpenAPI declarations: verify, then apply."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sendgrid.helpers.eventwebhook import EventWebhook
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from infra.http import ProblemDetail, problem
from producers.webhooks.common import NudgeRecords
from producers.webhooks.keywords import HELP_TEXT, sms_keyword
from producers.webhooks.sendgrid import WebhookSummary, _SendGridHooks
from producers.webhooks.signatures import (
    MAX_FUTURE_SKEW_S,
    FormParams,
    fresh,
    parse_form,
    sendgrid_signature_valid,
    twilio_signature_valid,
)
from producers.webhooks.twilio import TWILIO_RANK, _TwilioHooks, sender_phone

log = structlog.get_logger(__name__)

TWILIO_MAX_BODY = 64 * 1024
"""An inbound SMS form is a few kilobytes (a body is at most 1,600 characters)."""
SENDGRID_MAX_BODY = 8 * 1024 * 1024
"""Generous headroom over SendGrid's event batches."""
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'

# Whole-value patterns (used with fullmatch).
_SID = re.compile(r"[A-Za-z0-9]{1,64}")
_DIGITS = re.compile(r"[0-9]{1,15}")


def _twiml(status: int = 200, message: str | None = None) -> Response:
    content = EMPTY_TWIML
    if message is not None:
        content = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Response><Message>{escape(message)}</Message></Response>"
        )
    return Response(content, status_code=status, media_type="text/xml")


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The raw body, or None when it is longer than ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "Malformed body, or a required field missing.",
        403: "Missing or invalid signature, stale timestamp, or the webhook is not configured.",
        413: "Body too large.",
    }
    return {code: {"model": ProblemDetail, "description": described[code]} for code in codes}


_TWIML_200: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "TwiML (empty, or the HELP answer).",
        "content": {"text/xml": {"schema": {"type": "string"}}},
    }
}


def _form_body(required: Iterable[str], fields: Iterable[str]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": list(required),
                        "properties": {name: {"type": "string"} for name in fields},
                        "additionalProperties": {"type": "string"},
                    }
                }
            },
        }
    }


def webhooks_router(
    sessions: sessionmaker[Session],
    *,
    identity_key: str,
    public_url: str,
    org_name: str,
    twilio_auth_token: str | None,
    sendgrid_public_key: str | None,
    max_age_s: float,
    nudges: NudgeRecords,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> APIRouter:
    """The provider webhooks. Without a Twilio auth token or a SendGrid public key, that
    provider's endpoints refuse every request (403). ``public_url`` is the base Twilio was
    given (scheme, host, any path prefix): the signature covers it, not the Host we see."""
    router = APIRouter(prefix="/webhooks", tags=["webhooks"])
    twilio = _TwilioHooks(sessions, identity_key, clock, nudges)
    sendgrid = _SendGridHooks(sessions, identity_key, clock, nudges)
    base = public_url.rstrip("/")
    verifier: EventWebhook | None = None
    if sendgrid_public_key:
        try:
            verifier = EventWebhook(sendgrid_public_key)
        except Exception:  # a bad key is reported; the rest of the app runs
            log.error("webhook.sendgrid_key_unusable")

    async def twilio_form(request: Request) -> FormParams | Response:
        """The verified form of a Twilio request, or the answer refusing it."""
        signature = request.headers.get("x-twilio-signature")
        if not twilio_auth_token:
            return problem(403, "X-Twilio-Signature", "the Twilio webhook is not configured")
        if not signature:
            return problem(403, "X-Twilio-Signature", "missing")
        body = await _read_body(request, TWILIO_MAX_BODY)
        if body is None:
            return problem(413, "body", f"larger than {TWILIO_MAX_BODY} bytes")
        params = parse_form(body)
        if params is None:
            return problem(400, "body", "not a UTF-8 application/x-www-form-urlencoded form")
        url = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if not twilio_signature_valid(twilio_auth_token, url, params, signature):
            return problem(403, "X-Twilio-Signature", "does not match the request")
        return params

    @router.post(
        "/twilio/sms",
        response_class=Response,
        responses={**_TWIML_200, **_problems(400, 403, 413)},
        openapi_extra=_form_body(
            ["MessageSid", "From"], ["MessageSid", "SmsSid", "From", "To", "Body"]
        ),
        summary="Twilio inbound SMS: STOP/START/HELP keywords",
    )
    async def twilio_sms(request: Request) -> Response:
        """An exact keyword (any case, alone in the message) withdraws SMS consent (STOP,
        STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPTOUT), restores it (START, YES,
        UNSTOP) or is answered (HELP, INFO); any other text from a known number becomes an
        organiser's task to read it (an objection in words is still an objection)."""
        form = await twilio_form(request)
        if isinstance(form, Response):
            log.info("webhook.twilio_sms", outcome="refused", status=form.status_code)
            return form
        sid = form.first("MessageSid") or form.first("SmsSid") or form.first("SmsMessageSid")
        if not sid or not _SID.fullmatch(sid):
            return problem(400, "MessageSid", "missing or malformed")
        sender = form.first("From")
        if sender is None:
            return problem(400, "From", "missing")
        keyword = sms_keyword(form.first("Body") or "")
        if keyword is None:
            phone = sender_phone(sender)
            done = {"outcome": "not_a_keyword"}
            if phone is not None:
                done = await run_in_threadpool(twilio.apply_reply, sid, phone)
            log.info("webhook.twilio_sms", message_sid=sid, **done)
            return _twiml()
        kind, word = keyword
        if kind == "help":
            log.info("webhook.twilio_sms", message_sid=sid, keyword=word, outcome="helped")
            return _twiml(message=HELP_TEXT.format(org=org_name))
        phone = sender_phone(sender)
        if phone is None:
            log.warning("webhook.twilio_sms", message_sid=sid, keyword=word, outcome="no_phone")
            return _twiml()
        done = await run_in_threadpool(twilio.apply_sms, sid, phone, kind, word)
        log.info("webhook.twilio_sms", message_sid=sid, keyword=word, **done)
        return _twiml()

    @router.post(
        "/twilio/status",
        response_class=Response,
        responses={**_TWIML_200, **_problems(400, 403, 413)},
        openapi_extra=_form_body(
            ["MessageSid", "MessageStatus"], ["MessageSid", "MessageStatus", "ErrorCode"]
        ),
        summary="Twilio message status callback",
    )
    async def twilio_status(request: Request) -> Response:
        """Moves the nudge's delivery status forwards only (callbacks come in any order);
        ErrorCode 21610 suppresses the recipient's phone. An unknown message is ignored."""
        form = await twilio_form(request)
        if isinstance(form, Response):
            log.info("webhook.twilio_status", outcome="refused", status=form.status_code)
            return form
        sid = form.first("MessageSid") or form.first("SmsSid")
        if not sid or not _SID.fullmatch(sid):
            return problem(400, "MessageSid", "missing or malformed")
        status = (form.first("MessageStatus") or form.first("SmsStatus") or "").strip().lower()
        if not status:
            return problem(400, "MessageStatus", "missing")
        raw_code = (form.first("ErrorCode") or "").strip()
        error_code = raw_code if _DIGITS.fullmatch(raw_code) else None
        if status not in TWILIO_RANK:
            log.info("webhook.twilio_status", message_sid=sid, outcome="status_not_tracked")
            return _twiml()
        outcome = await run_in_threadpool(twilio.apply_twilio_status, sid, status, error_code)
        log.info(
            "webhook.twilio_status",
            message_sid=sid,
            status=status,
            error_code=error_code,
            outcome=outcome,
        )
        return _twiml()

    @router.post(
        "/sendgrid/events",
        response_model=WebhookSummary,
        responses=_problems(400, 403, 413),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"type": "array", "items": {"type": "object"}}}
                },
            }
        },
        summary="SendGrid signed Event Webhook",
    )
    async def sendgrid_events(request: Request) -> JSONResponse:
        """Always 200 for a verified array: an item that cannot be applied is skipped and
        reported, since SendGrid retries the whole batch on any other answer."""
        signature = request.headers.get("x-twilio-email-event-webhook-signature")
        timestamp = request.headers.get("x-twilio-email-event-webhook-timestamp")
        refusal: JSONResponse | None = None
        if verifier is None:
            refusal = problem(403, "signature", "the SendGrid webhook is not configured")
        elif not signature or not timestamp:
            refusal = problem(403, "signature", "signature and timestamp headers are required")
        elif not _DIGITS.fullmatch(timestamp) or not fresh(
            int(timestamp), clock(), max_age_s, MAX_FUTURE_SKEW_S
        ):
            refusal = problem(403, "timestamp", "not a Unix time within the accepted window")
        if refusal is not None:
            log.info("webhook.sendgrid", outcome="refused", status=refusal.status_code)
            return refusal
        assert verifier is not None and signature is not None and timestamp is not None
        body = await _read_body(request, SENDGRID_MAX_BODY)
        if body is None:
            return problem(413, "body", f"larger than {SENDGRID_MAX_BODY} bytes")
        if not sendgrid_signature_valid(verifier, body, signature, timestamp):
            log.info("webhook.sendgrid", outcome="refused", status=403)
            return problem(403, "signature", "does not match the body and timestamp")
        try:
            items = json.loads(body)
        except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError too
            return problem(400, "body", "malformed JSON")
        if not isinstance(items, list):
            return problem(400, "body", "a JSON array of events is required")
        summary = await run_in_threadpool(sendgrid.apply_sendgrid, items)
        log.info(
            "webhook.sendgrid",
            events=len(items),
            applied=summary.applied,
            duplicates=summary.duplicates,
            skipped=len(summary.skipped),
        )
        return JSONResponse(summary.model_dump(mode="json"))

    return router
