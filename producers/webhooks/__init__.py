"""Provider webhooks: Twilio inbound SMS keywords and status callbacks, SendGrid's Event Webhook.

Every request is verified before anything in it is acted on: Twilio's HMAC signature over the
public URL and the form fields, SendGrid's ECDSA signature over timestamp and raw body plus a
freshness window. A request that fails is answered 403 and changes nothing. A verified request
is applied in one transaction, committed before the answer, with a receipt per provider event
so that a retried delivery changes nothing. Addresses, phone numbers and message bodies never
reach the logs or the answers.

``signatures`` verifies, ``keywords`` reads an inbound text, ``twilio`` and ``sendgrid`` apply
what the providers report, ``common`` holds what they share (the ``NudgeRecords`` port, the
transaction, receipts), ``routes`` is the router.
"""

from producers.webhooks.common import NudgeRecords
from producers.webhooks.keywords import sms_keyword
from producers.webhooks.routes import EMPTY_TWIML, webhooks_router
from producers.webhooks.sendgrid import WebhookSummary
from producers.webhooks.signatures import (
    FormParams,
    parse_form,
    sendgrid_signature_valid,
    twilio_signature_valid,
)
from producers.webhooks.twilio import TWILIO_RANK

__all__ = [
    "EMPTY_TWIML",
    "TWILIO_RANK",
    "FormParams",
    "NudgeRecords",
    "WebhookSummary",
    "parse_form",
    "sendgrid_signature_valid",
    "sms_keyword",
    "twilio_signature_valid",
    "webhooks_router",
]
