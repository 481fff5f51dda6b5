"""The real SendGrid and Twilio SDKs against a local stub: right requests, errors mapped right."""

from __future__ import annotations

import base64
import re
import socket
import time
from email.utils import formatdate
from typing import Any

import pytest

from consumers.messages import OutgoingMessage, Sender, SendError
from consumers.providers import SendGridEmailSender, TwilioSmsSender
from consumers.rendering import TemplateBook
from tests.stub_providers import StubProviders

API_KEY = "SG.test-key-not-secret"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-test-token"
FROM_NUMBER = "+447700900000"
EMAIL = "jo.bloggs@example.org"
PHONE = "+447700900123"
OPT_OUT = "http://127.0.0.1:8000/unsubscribe/nudge-1"
TIMEOUT_S = 0.5


@pytest.fixture(scope="module")
def book() -> TemplateBook:
    return TemplateBook()


@pytest.fixture
def email(book: TemplateBook) -> OutgoingMessage:
    return book.render(
        "welcome",
        "email",
        {"first_name": "Jo", "area": "Hackney"},
        nudge_id="nudge-1",
        to=EMAIL,
        org_name="Grassroots Together",
        opt_out_url=OPT_OUT,
    )


@pytest.fixture
def sms(book: TemplateBook) -> OutgoingMessage:
    return book.render(
        "invite_next_meeting",
        "sms",
        {"first_name": "Jo", "meeting_when": "Tuesday 14 October, 7pm"},
        nudge_id="nudge-2",
        to=PHONE,
        org_name="Grassroots Together",
        opt_out_url=OPT_OUT,
    )


def sendgrid(url: str) -> SendGridEmailSender:
    return SendGridEmailSender(
        API_KEY, "hello@example.org", "Grassroots Together", host=url, timeout_s=TIMEOUT_S
    )


def twilio(url: str) -> TwilioSmsSender:
    return TwilioSmsSender(ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, base_url=url, timeout_s=TIMEOUT_S)


def closed_port_url() -> str:
    """A loopback URL nobody listens on: connecting is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def send_failing(sender: Sender, message: OutgoingMessage) -> SendError:
    with pytest.raises(SendError) as caught:
        sender.send(message)
    error = caught.value
    # The message and its cause chain never carry the recipient or the credentials.
    text = str(error)
    for secret in (EMAIL, PHONE, API_KEY, AUTH_TOKEN, ACCOUNT_SID):
        assert secret not in text
    assert error.__cause__ is None and error.__suppress_context__
    assert message.nudge_id in text
    return error


# ---- SendGrid ---------------------------------------------------------------------------


def test_sendgrid_posts_the_mail_with_auth_headers_and_custom_args(
    stub_providers: StubProviders, email: OutgoingMessage
) -> None:
    stub_providers.script(headers={"X-Message-Id": "sg-message-42"})

    result = sendgrid(stub_providers.url).send(email)

    assert result.provider == "sendgrid"
    assert result.message_id == "sg-message-42"
    [request] = stub_providers.requests
    assert (request.method, request.path) == ("POST", "/v3/mail/send")
    assert request.header("Authorization") == f"Bearer {API_KEY}"
    assert request.header("Content-Type") == "application/json"
    payload = request.json()
    assert payload["from"] == {"email": "hello@example.org", "name": "Grassroots Together"}
    assert payload["personalizations"] == [{"to": [{"email": EMAIL}]}]
    assert payload["subject"] == "Welcome to Grassroots Together"
    assert payload["content"] == [
        {"type": "text/plain", "value": email.body},
        {"type": "text/html", "value": email.html},
    ]
    assert payload["content"][0]["value"].startswith("Hi Jo,")
    assert f'href="{OPT_OUT}"' in payload["content"][1]["value"]
    assert payload["headers"] == {
        "List-Unsubscribe": f"<{OPT_OUT}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert payload["custom_args"] == {"nudge_id": "nudge-1"}


def test_sendgrid_returns_the_stub_message_id_by_default(
    stub_providers: StubProviders, email: OutgoingMessage
) -> None:
    result = sendgrid(stub_providers.url).send(email)
    assert result.message_id is not None and re.fullmatch(r"sg-[0-9a-f]{22}", result.message_id)


def test_sendgrid_refuses_an_sms() -> None:
    sms = OutgoingMessage("n", "sms", PHONE, None, "Hi. Reply STOP to opt out")
    with pytest.raises(ValueError, match="cannot send 'sms'"):
        sendgrid("http://127.0.0.1:9").send(sms)


SENDGRID_400 = {
    "errors": [
        {"message": f"Invalid address {EMAIL}", "field": "personalizations.0.to.0.email"},
        {"message": "The from address does not match a verified Sender", "field": "from"},
    ]
}


@pytest.mark.parametrize(
    ("status", "headers", "body", "retryable", "retry_after_s", "detail"),
    [
        (429, {"Retry-After": "7"}, {"errors": [{"message": "too many"}]}, True, 7.0, None),
        (500, {}, b"", True, None, None),
        (503, {"Retry-After": "2.5"}, b"", True, 2.5, None),
        (502, {}, b"bad gateway", True, None, None),
        (400, {}, SENDGRID_400, False, None, "fields: from, personalizations.0.to.0.email"),
        (401, {}, {"errors": [{"message": "bad key", "field": None}]}, False, None, None),
        (403, {}, b"", False, None, None),
        (413, {}, b"", False, None, None),
    ],
)
def test_sendgrid_http_errors_map_to_send_error(
    stub_providers: StubProviders,
    email: OutgoingMessage,
    status: int,
    headers: dict[str, str],
    body: Any,
    retryable: bool,
    retry_after_s: float | None,
    detail: str | None,
) -> None:
    stub_providers.script(status, headers=headers, body=body)

    error = send_failing(sendgrid(stub_providers.url), email)

    assert error.status == status
    assert error.retryable is retryable
    assert error.retry_after_s == retry_after_s
    assert error.ambiguous is False
    assert error.code is None
    assert f"HTTP {status}" in str(error)
    if detail:
        assert detail in str(error)


def test_sendgrid_retry_after_as_an_http_date(
    stub_providers: StubProviders, email: OutgoingMessage
) -> None:
    stub_providers.script(429, headers={"Retry-After": formatdate(time.time() + 30, usegmt=True)})
    error = send_failing(sendgrid(stub_providers.url), email)
    assert error.retry_after_s is not None and 25 <= error.retry_after_s <= 31


def test_sendgrid_rate_limit_reset_when_no_retry_after(
    stub_providers: StubProviders, email: OutgoingMessage
) -> None:
    stub_providers.script(429, headers={"X-RateLimit-Reset": str(int(time.time()) + 60)})
    error = send_failing(sendgrid(stub_providers.url), email)
    assert error.retry_after_s is not None and 55 <= error.retry_after_s <= 61


def test_sendgrid_connection_refused_is_retryable_and_not_ambiguous(
    email: OutgoingMessage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    error = send_failing(sendgrid(closed_port_url()), email)
    assert error.retryable is True
    assert error.ambiguous is False
    assert error.status is None
    assert "unreachable" in str(error)


def test_sendgrid_read_timeout_is_ambiguous(
    stub_providers: StubProviders, email: OutgoingMessage
) -> None:
    stub_providers.script(delay_s=3.0)
    started = time.monotonic()

    error = send_failing(sendgrid(stub_providers.url), email)

    assert time.monotonic() - started < 2.0  # timeout_s was applied, not the SDK's none
    assert error.ambiguous is True
    assert error.retryable is True
    assert error.status is None
    assert len(stub_providers.requests) == 1  # the request did reach the provider


def test_sendgrid_connection_dropped_after_sending_is_ambiguous(
    stub_providers: StubProviders, email: OutgoingMessage
) -> None:
    stub_providers.script(drop=True)
    error = send_failing(sendgrid(stub_providers.url), email)
    assert error.ambiguous is True
    assert len(stub_providers.requests) == 1


# ---- Twilio -----------------------------------------------------------------------------


def test_twilio_posts_the_message_form_with_basic_auth(
    stub_providers: StubProviders, sms: OutgoingMessage
) -> None:
    result = twilio(stub_providers.url).send(sms)

    assert result.provider == "twilio"
    assert result.message_id is not None and re.fullmatch(r"SM[0-9a-f]{32}", result.message_id)
    [request] = stub_providers.requests
    assert request.method == "POST"
    assert request.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    credentials = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    assert request.header("Authorization") == f"Basic {credentials}"
    assert request.header("Content-Type") == "application/x-www-form-urlencoded"
    assert request.form() == {"To": PHONE, "From": FROM_NUMBER, "Body": sms.body}
    assert sms.body.startswith("Hi Jo, it's Grassroots Together.")
    assert sms.body.endswith("Reply STOP to opt out")


def test_twilio_asks_for_status_callbacks_when_given_the_url(
    stub_providers: StubProviders, sms: OutgoingMessage
) -> None:
    callback = "https://engage.example.org/webhooks/twilio/status"
    sender = TwilioSmsSender(
        ACCOUNT_SID,
        AUTH_TOKEN,
        FROM_NUMBER,
        base_url=stub_providers.url,
        timeout_s=TIMEOUT_S,
        status_callback=callback,
    )
    sender.send(sms)
    [request] = stub_providers.requests
    assert request.form()["StatusCallback"] == callback


def test_twilio_ignores_region_and_edge_in_the_environment(
    stub_providers: StubProviders, sms: OutgoingMessage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read by the SDK itself, these would turn 127.0.0.1 into 127.dublin.ie1.0.1.
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    monkeypatch.setenv("TWILIO_EDGE", "dublin")
    twilio(stub_providers.url).send(sms)
    assert len(stub_providers.requests) == 1


def test_twilio_refuses_an_email(email: OutgoingMessage) -> None:
    with pytest.raises(ValueError, match="cannot send 'email'"):
        twilio("http://127.0.0.1:9").send(email)


def twilio_error(code: int, status: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


@pytest.mark.parametrize(
    ("status", "body", "retryable", "code"),
    [
        (429, twilio_error(20429, 429, "Too Many Requests"), True, 20429),
        (500, b"", True, None),
        (503, b"<html>Service Unavailable</html>", True, None),
        (
            400,
            twilio_error(21610, 400, "Attempt to send to unsubscribed recipient"),
            False,
            21610,
        ),
        (
            400,
            twilio_error(21211, 400, f"The 'To' number {PHONE} is not a valid phone number."),
            False,
            21211,
        ),
        (401, twilio_error(20003, 401, "Authenticate"), False, 20003),
        (404, twilio_error(20404, 404, "Not found"), False, 20404),
    ],
)
def test_twilio_http_errors_map_to_send_error(
    stub_providers: StubProviders,
    sms: OutgoingMessage,
    status: int,
    body: Any,
    retryable: bool,
    code: int | None,
) -> None:
    stub_providers.script(status, body=body)

    error = send_failing(twilio(stub_providers.url), sms)

    assert error.status == status
    assert error.code == code
    assert error.retryable is retryable
    assert error.ambiguous is False
    assert f"HTTP {status}" in str(error)
    if code == 21610:
        assert "replied STOP" in str(error)


def test_twilio_rate_limit_code_is_retryable_whatever_the_status(
    stub_providers: StubProviders, sms: OutgoingMessage
) -> None:
    stub_providers.script(400, body=twilio_error(20429, 400, "Too Many Requests"))
    error = send_failing(twilio(stub_providers.url), sms)
    assert (error.retryable, error.code) == (True, 20429)


def test_twilio_connection_refused_is_retryable_and_not_ambiguous(
    sms: OutgoingMessage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv("TWILIO_REGION", raising=False)
    monkeypatch.delenv("TWILIO_EDGE", raising=False)
    error = send_failing(twilio(closed_port_url()), sms)
    assert error.retryable is True
    assert error.ambiguous is False
    assert error.status is None
    assert "unreachable" in str(error)


def test_twilio_read_timeout_is_ambiguous(
    stub_providers: StubProviders, sms: OutgoingMessage
) -> None:
    stub_providers.script(delay_s=3.0)
    started = time.monotonic()

    error = send_failing(twilio(stub_providers.url), sms)

    assert time.monotonic() - started < 2.0
    assert error.ambiguous is True
    assert error.retryable is True
    assert error.status is None
    assert len(stub_providers.requests) == 1


def test_twilio_connection_dropped_after_sending_is_ambiguous(
    stub_providers: StubProviders, sms: OutgoingMessage
) -> None:
    stub_providers.script(drop=True)
    error = send_failing(twilio(stub_providers.url), sms)
    assert error.ambiguous is True
    assert len(stub_providers.requests) == 1


# ---- the stub itself --------------------------------------------------------------------


def test_stub_answers_scripted_requests_in_order_then_normally(
    stub_providers: StubProviders, sms: OutgoingMessage
) -> None:
    stub_providers.script(500, times=2)
    sender = twilio(stub_providers.url)
    for _ in range(2):
        assert send_failing(sender, sms).status == 500
    assert sender.send(sms).message_id is not None
    assert len(stub_providers.requests) == 3
