"""Provider webhooks on both databases: Twilio STOP/START/HELP and status callbacks, SendGrid's
signed Event Webhook. Real signatures (Twilio's HMAC, ECDSA P-256 keys made per run), the
providers' published samples and vectors, and the real app under uvicorn."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sendgrid.helpers.eventwebhook import EventWebhook
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs
from twilio.request_validator import RequestValidator

from consumers.dispatch import Dispatcher
from consumers.rendering import TemplateBook
from consumers.repository import Nudges, list_outbox, store_nudges
from infra.consent import suppressed
from infra.db import (
    ConsentRecord,
    IdentityLink,
    LedgerEvent,
    Nudge,
    Supporter,
    SupporterAlias,
    Suppression,
    WebhookReceipt,
)
from infra.settings import Settings
from producers.webhooks import (
    EMPTY_TWIML,
    TWILIO_RANK,
    parse_form,
    sendgrid_signature_valid,
    twilio_signature_valid,
    webhooks_router,
)
from schemas.identity import contact_identity
from tests.factories import add_supporter, nudge_request

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "providers"
KEY = "test-key"
AUTH_TOKEN = "twilio-test-auth-token"
PUBLIC = "https://engage.example.org"
ORG = "Hackney Friends & Neighbours"
SID = "sup_" + "1" * 32
OTHER = "sup_" + "2" * 32
PHONE = "+447911123456"
EMAIL = "jo.bloggs@example.org"
SMS_PATH = "/webhooks/twilio/sms"
STATUS_PATH = "/webhooks/twilio/status"
SENDGRID_PATH = "/webhooks/sendgrid/events"
SG_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SG_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
WORDING = "sms-consent-v2"


def fixture_json(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


# --- keys, settings, clients -------------------------------------------------------------------


@pytest.fixture(scope="module")
def sendgrid_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_key_b64(private: ec.EllipticCurvePrivateKey) -> str:
    """What SendGrid shows as the verification key: base64 DER SubjectPublicKeyInfo."""
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


@pytest.fixture
def settings(
    tmp_path: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    sendgrid_key: ec.EllipticCurvePrivateKey,
) -> Settings:
    """The conftest settings plus both providers' secrets and a public URL behind a proxy."""
    for name in list(os.environ):
        if name.upper().startswith("ENGAGE_"):
            monkeypatch.delenv(name)
    return Settings(
        home=tmp_path,
        database_url=database_url,
        api_token="test-token",
        identity_key=KEY,
        org_name=ORG,
        public_url=PUBLIC + "/",
        twilio_auth_token=AUTH_TOKEN,
        sendgrid_webhook_public_key=public_key_b64(sendgrid_key),
        webhook_max_age_s=600,
    )


@pytest.fixture
def client(api: str) -> Iterator[httpx.Client]:
    # Plain HTTP on loopback: verify=False spares building a TLS context (15 ms) per test.
    with httpx.Client(base_url=api, trust_env=False, timeout=30, verify=False) as c:
        yield c


Serve = Callable[[FastAPI], AbstractContextManager[httpx.Client]]


@pytest.fixture
def serve(_uvicorn: tuple[str, Any]) -> Serve:
    """Serve another app for a while on the run's uvicorn server (the api fixture's app is
    put back after): a client of it."""
    base_url, slot = _uvicorn

    @contextlib.contextmanager
    def serving(app: FastAPI) -> Iterator[httpx.Client]:
        previous, slot.app = slot.app, app
        try:
            with httpx.Client(base_url=base_url, trust_env=False, timeout=30) as c:
                yield c
        finally:
            slot.app = previous

    return serving


def stopped(at: datetime) -> Callable[[], datetime]:
    """A clock that always says ``at``."""
    return lambda: at


def router_app(
    sessions: sessionmaker[Session],
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    sendgrid_public_key: str | None = None,
    twilio_auth_token: str | None = AUTH_TOKEN,
) -> FastAPI:
    """The webhooks alone, for what the app's settings cannot set: a clock, a missing secret."""
    app = FastAPI()
    app.include_router(
        webhooks_router(
            sessions,
            identity_key=KEY,
            public_url=PUBLIC,
            org_name=ORG,
            twilio_auth_token=twilio_auth_token,
            sendgrid_public_key=sendgrid_public_key,
            max_age_s=600,
            nudges=Nudges(),
            clock=clock,
        )
    )
    return app


# --- Twilio requests ---------------------------------------------------------------------------


def twilio_signature(path: str, params: dict[str, str], token: str = AUTH_TOKEN) -> str:
    return str(RequestValidator(token).compute_signature(PUBLIC + path, params))


def post_twilio(
    client: httpx.Client,
    path: str,
    params: dict[str, str],
    *,
    signature: str | None = "compute",
    body: bytes | None = None,
) -> httpx.Response:
    """POST a form the way Twilio does, signed for the public URL unless told otherwise."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if signature == "compute":
        signature = twilio_signature(path, params)
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    content = body if body is not None else urlencode(params).encode()
    return client.post(path, content=content, headers=headers)


def inbound(body: str, sid: str | None = None, sender: str = PHONE) -> dict[str, str]:
    """An inbound SMS with the request parameters Twilio documents
    (twilio_inbound_message_documented_params.json), for our number, sender and text."""
    params = dict(
        fixture_json("twilio_inbound_message_documented_params.json")["request_parameters"]
    )
    message_sid = sid or f"SM{uuid.uuid4().hex}"
    params.update(MessageSid=message_sid, SmsSid=message_sid, SmsMessageSid=message_sid)
    params.update(From=sender, To="+447700900000", Body=body)
    return params


def status_callback(message_sid: str, status: str, error_code: str | None = None) -> dict[str, str]:
    """Twilio's documented status callback (twilio_status_callback_sent_docs_example.json) for
    another message and status."""
    params = dict(fixture_json("twilio_status_callback_sent_docs_example.json"))
    params.update(MessageSid=message_sid, SmsSid=message_sid, MessageStatus=status)
    params["SmsStatus"] = status
    if error_code is not None:
        params["ErrorCode"] = error_code
    return params


# --- SendGrid requests -------------------------------------------------------------------------


def sign_sendgrid(private: ec.EllipticCurvePrivateKey, timestamp: str, body: bytes) -> str:
    signature = private.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(signature).decode()


def post_sendgrid(
    client: httpx.Client,
    private: ec.EllipticCurvePrivateKey,
    payload: Any = None,
    *,
    body: bytes | None = None,
    timestamp: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    raw = body if body is not None else json.dumps(payload).encode() + b"\r\n"
    stamp = timestamp or str(int(datetime.now(UTC).timestamp()))
    sent = {
        "Content-Type": "application/json",
        SG_SIGNATURE: sign_sendgrid(private, stamp, raw),
        SG_TIMESTAMP: stamp,
    }
    sent.update(headers or {})
    return client.post(SENDGRID_PATH, content=raw, headers={k: v for k, v in sent.items() if v})


# --- the database ------------------------------------------------------------------------------


def seed_person(
    sessions: sessionmaker[Session],
    sid: str = SID,
    *,
    email: str | None = EMAIL,
    phone: str | None = PHONE,
    consent: tuple[str, ...] = ("email", "sms"),
    link: bool = True,
    area: str | None = "Hackney",
) -> None:
    """A supporter with contact details, consent given a day ago, and (optionally) the
    identity links ingest writes; without links they are like rows older than the links."""
    with sessions.begin() as session:
        add_supporter(
            session,
            sid,
            email=email,
            phone=phone,
            area=area,
            consent=consent,
            consented_at=datetime.now(UTC) - timedelta(days=1),
            wording_version=WORDING,
        )
        if link and email:
            identity = contact_identity(KEY, "email", email)
            session.add(IdentityLink(identity=identity, supporter_id=sid))
        if link and phone:
            identity = contact_identity(KEY, "phone", phone)
            session.add(IdentityLink(identity=identity, supporter_id=sid))


def add_nudge(
    sessions: sessionmaker[Session],
    channel: str,
    *,
    sid: str = SID,
    provider: str | None = None,
    provider_message_id: str | None = None,
    template: str = "invite_next_meeting",
) -> str:
    """A nudge for the supporter: pending, or sent through a provider when one is named."""
    nudge_id = f"test-rule:{sid}:{channel}:{uuid.uuid4().hex[:8]}"
    with sessions.begin() as session:
        store_nudges(
            session,
            [
                nudge_request(
                    nudge_id,
                    sid,
                    channel,
                    datetime.now(UTC),
                    template=template,
                    rule="test-rule",
                    context={"petition_title": "Clean air", "area": "Hackney"},
                )
            ],
        )
        if provider is not None:
            session.execute(
                update(Nudge)
                .where(Nudge.nudge_id == nudge_id)
                .values(status="sent", provider=provider, provider_message_id=provider_message_id)
            )
    return nudge_id


def snapshot(sessions: sessionmaker[Session]) -> dict[str, Any]:
    """Everything a webhook can change: row counts, suppressions, nudges' delivery status."""
    with sessions() as session:
        counted = {
            model.__tablename__: session.scalar(select(func.count()).select_from(model))
            for model in (LedgerEvent, ConsentRecord, Suppression, WebhookReceipt, Supporter)
        }
        suppressions = session.execute(
            select(Suppression.channel, Suppression.contact, Suppression.lifted_at).order_by(
                Suppression.channel, Suppression.contact
            )
        ).all()
        nudges = session.execute(
            select(
                Nudge.nudge_id, Nudge.status, Nudge.delivery_status, Nudge.delivery_updated_at
            ).order_by(Nudge.nudge_id)
        ).all()
    return {**counted, "suppressions": suppressions, "nudges": nudges}


def consent_rows(sessions: sessionmaker[Session], sid: str, channel: str) -> list[ConsentRecord]:
    with sessions() as session:
        return list(
            session.scalars(
                select(ConsentRecord)
                .where(ConsentRecord.supporter_id == sid, ConsentRecord.channel == channel)
                .order_by(ConsentRecord.recorded_at, ConsentRecord.id)
            )
        )


def ledger(sessions: sessionmaker[Session], topic: str) -> list[dict[str, Any]]:
    with sessions() as session:
        rows = session.scalars(
            select(LedgerEvent.payload).where(LedgerEvent.topic == topic).order_by(LedgerEvent.seq)
        )
        return [json.loads(payload) for payload in rows]


def is_suppressed(sessions: sessionmaker[Session], channel: str, address: str) -> bool:
    with sessions() as session:
        return bool(suppressed(session, KEY, [(channel, address)]))


def suppression_row(sessions: sessionmaker[Session], channel: str, address: str) -> Suppression:
    kind: Literal["email", "phone"] = "email" if channel == "email" else "phone"
    with sessions() as session:
        row = session.get(Suppression, (channel, contact_identity(KEY, kind, address)))
        assert row is not None
        return row


def nudge(sessions: sessionmaker[Session], nudge_id: str) -> Nudge:
    with sessions() as session:
        row = session.get(Nudge, nudge_id)
        assert row is not None
        return row


# === Twilio: signatures =======================================================================


def test_published_twilio_vectors_verify_the_way_the_app_verifies() -> None:
    """Twilio's own vectors through the app's form parser and validator call."""
    ruby = fixture_json("twilio_inbound_sms_twilio_ruby.signature.json")
    form = parse_form((FIXTURES / ruby["form_body_file"]).read_bytes())
    assert form is not None
    assert form.first("SmsSid") == "SM2003cbd5e6a3701999aa3e5f20ff2787"
    assert form.first("From") == "+14159354345"
    token, url = ruby["auth_token"], ruby["url"]
    assert twilio_signature_valid(token, url, form, ruby["expected_signature"])
    for negative in ruby["negative_cases"]:
        assert not twilio_signature_valid(token, url, form, negative["signature"])
    assert not twilio_signature_valid(token + "x", url, form, ruby["expected_signature"])
    assert not twilio_signature_valid(token, url + "/", form, ruby["expected_signature"])

    helper = fixture_json("twilio_signature_vectors_helper_libs.json")
    checked = 0
    for vector in helper["vectors"]:
        if "raw_body" in vector:
            continue  # JSON bodies signed with bodySHA256: not what an SMS webhook sends
        if "params_form" in vector:
            params = parse_form(vector["params_form"].encode())
        else:
            params = parse_form(urlencode(helper["params"]).encode())
        assert params is not None
        expected = vector["expected_signature"]
        assert twilio_signature_valid(helper["auth_token"], vector["request_url"], params, expected)
        checked += 1
    assert checked == 8
    for negative in helper["negative_cases"]:
        raw = negative.get("raw_body")
        params = parse_form(raw.encode() if raw else urlencode(helper["params"]).encode())
        assert params is not None
        assert not twilio_signature_valid(
            helper["auth_token"], negative["request_url"], params, negative["signature"]
        )


def test_the_published_inbound_sms_form_is_accepted_and_changes_nothing(
    client: httpx.Client, sessions: sessionmaker[Session]
) -> None:
    """Twilio's captured request (legacy fields: SmsSid, no MessageSid), re-signed for our URL:
    "Orly" is no keyword, so consent is untouched and a person is asked to read it; with Body
    STOP it withdraws by SmsSid."""
    params = fixture_json("twilio_inbound_sms_twilio_ruby.params.json")
    seed_person(sessions, phone=params["From"])
    before = snapshot(sessions)
    answer = post_twilio(client, SMS_PATH, params)
    assert answer.status_code == 200
    assert answer.text == EMPTY_TWIML
    assert answer.headers["content-type"].startswith("text/xml")
    after = snapshot(sessions)
    for unchanged in ("consent", "suppressions", "nudges"):
        assert after[unchanged] == before[unchanged]
    assert [t["kind"] for t in ledger(sessions, "task.created")] == ["read_sms_reply"]

    answer = post_twilio(client, SMS_PATH, {**params, "Body": "STOP"})
    assert answer.status_code == 200
    assert is_suppressed(sessions, "sms", params["From"])
    assert consent_rows(sessions, SID, "sms")[-1].granted is False
    with sessions() as session:
        receipt = session.get(WebhookReceipt, ("twilio-sms", params["SmsSid"]))
    assert receipt is not None


# === Twilio: inbound keywords =================================================================


@pytest.mark.parametrize(
    ("body", "word"),
    [
        ("STOP", "STOP"),
        ("stop", "STOP"),
        (" Stop ", "STOP"),
        ("Stop\n", "STOP"),
        ("STOPALL", "STOPALL"),
        ("unsubscribe", "UNSUBSCRIBE"),
        ("Cancel", "CANCEL"),
        ("END", "END"),
        ("quit", "QUIT"),
        ("REVOKE", "REVOKE"),
        ("optout", "OPTOUT"),
    ],
)
def test_an_opt_out_word_withdraws_sms_consent_and_suppresses_the_phone(
    client: httpx.Client, sessions: sessionmaker[Session], body: str, word: str
) -> None:
    seed_person(sessions)
    answer = post_twilio(client, SMS_PATH, inbound(body))
    assert answer.status_code == 200
    assert answer.text == EMPTY_TWIML
    assert answer.headers["content-type"].startswith("text/xml")

    latest = consent_rows(sessions, SID, "sms")[-1]
    assert (latest.granted, latest.source) == (False, f"sms_keyword:{word}")
    assert consent_rows(sessions, SID, "email")[-1].granted is True  # texts only
    assert is_suppressed(sessions, "sms", PHONE)
    assert not is_suppressed(sessions, "email", EMAIL)
    row = suppression_row(sessions, "sms", PHONE)
    assert (row.reason, row.source, row.lifted_at) == ("replied STOP", f"sms_keyword:{word}", None)
    (event,) = ledger(sessions, "consent.changed")
    assert event["supporter_id"] == SID
    assert (event["channel"], event["granted"], event["source"]) == (
        "sms",
        False,
        f"sms_keyword:{word}",
    )


@pytest.mark.parametrize(
    "body", ["STOP please", "please stop", "STOP.", "STOPP", "S T O P", "", "   ", "Stop it now"]
)
def test_anything_but_a_lone_keyword_changes_no_consent_but_asks_a_person_to_read_it(
    client: httpx.Client, sessions: sessionmaker[Session], body: str
) -> None:
    seed_person(sessions)
    before = snapshot(sessions)
    inbound_sms = inbound(body)
    answer = post_twilio(client, SMS_PATH, inbound_sms)
    assert answer.status_code == 200
    assert answer.text == EMPTY_TWIML
    after = snapshot(sessions)
    for unchanged in ("consent", "suppressions", "nudges", "supporters"):
        assert after[unchanged] == before[unchanged]
    (task,) = ledger(sessions, "task.created")
    sid = inbound_sms["MessageSid"]
    assert (task["supporter_id"], task["kind"], task["priority"], task["area"]) == (
        SID,
        "read_sms_reply",
        "high",
        "Hackney",  # routed like every other task of the supporter's
    )
    assert sid in task["reason"]
    assert not body.strip() or body.strip() not in task["reason"]  # the text stays in Twilio
    # Twilio retries the same message: still one task.
    post_twilio(client, SMS_PATH, inbound_sms)
    assert len(ledger(sessions, "task.created")) == 1


def test_a_reply_from_an_unknown_number_makes_no_task(
    client: httpx.Client, sessions: sessionmaker[Session]
) -> None:
    before = snapshot(sessions)
    assert post_twilio(client, SMS_PATH, inbound("who is this?")).status_code == 200
    assert snapshot(sessions) == before


def test_stop_reaches_every_supporter_with_the_phone_linked_or_not_and_after_a_merge(
    client: httpx.Client, sessions: sessionmaker[Session]
) -> None:
    """A row older than the identity links (phone column only), and a linked id merged into
    another: both the old row's supporter and the survivor withdraw; the absorbed id does not."""
    absorbed, survivor = "sup_" + "3" * 32, "sup_" + "4" * 32
    seed_person(sessions, SID, email=None, link=False)
    seed_person(sessions, survivor, email="other@example.org", phone=None)
    with sessions.begin() as session:
        session.add(
            IdentityLink(identity=contact_identity(KEY, "phone", PHONE), supporter_id=absorbed)
        )
        session.add(
            SupporterAlias(absorbed_id=absorbed, survivor_id=survivor, event_id=uuid.uuid4())
        )
    assert post_twilio(client, SMS_PATH, inbound("STOP")).status_code == 200
    assert consent_rows(sessions, SID, "sms")[-1].granted is False
    assert consent_rows(sessions, survivor, "sms")[-1].granted is False
    assert consent_rows(sessions, absorbed, "sms") == []
    assert {e["supporter_id"] for e in ledger(sessions, "consent.changed")} == {SID, survivor}


def test_stop_from_an_unknown_phone_still_suppresses_it(
    client: httpx.Client, sessions: sessionmaker[Session]
) -> None:
    """Nobody has the number yet: it is suppressed, so a later import of it is too. An E.164
    number libphonenumber rejects (Ofcom's drama range) is taken as Twilio wrote it."""
    for phone in ("+447700900123", "07911 123456"):
        params = inbound("STOP", sender=phone)
        assert post_twilio(client, SMS_PATH, params).status_code == 200
    assert is_suppressed(sessions, "sms", "+447700900123")
    assert is_suppressed(sessions, "sms", PHONE)  # national format normalised to E.164
    assert ledger(sessions, "consent.changed") == []


def test_a_pending_text_is_refused_by_the_dispatcher_after_stop(
    client: httpx.Client, sessions: sessionmaker[Session]
) -> None:
    seed_person(sessions)
    text = add_nudge(sessions, "sms")
    email = add_nudge(sessions, "email", template="welcome")
    assert post_twilio(client, SMS_PATH, inbound("STOP")).status_code == 200

    stage = Dispatcher(sessions, TemplateBook(), {}, ORG, PUBLIC, KEY)
    assert stage.dispatch(text) == "skipped"
    assert stage.dispatch(email) == "sent"  # STOP is about texts only
    with sessions() as session:
        assert [row["channel"] for row in list_outbox(session, 10)] == ["email"]
    assert nudge(sessions, text).status == "skipped"


@pytest.mark.parametrize("word", ["START", "yes", "Unstop"])
def test_start_restores_what_stop_withdrew_with_an_audit_trail(
    client: httpx.Client, sessions: sessionmaker[Session], word: str
) -> None:
    seed_person(sessions)
    assert post_twilio(client, SMS_PATH, inbound("STOP")).status_code == 200
    answer = post_twilio(client, SMS_PATH, inbound(word))
    assert answer.status_code == 200
    assert answer.text == EMPTY_TWIML

    source = f"sms_keyword:{word.upper()}"
    records = consent_rows(sessions, SID, "sms")
    assert [(r.granted, r.source) for r in records] == [
        (True, "signup"),
        (False, "sms_keyword:STOP"),
        (True, source),
    ]
    assert records[-1].wording_version == WORDING  # the consent it restores
    assert not is_suppressed(sessions, "sms", PHONE)
    row = suppression_row(sessions, "sms", PHONE)
    assert row.lifted_at is not None
    assert row.lifted_by == source
    assert [e["granted"] for e in ledger(sessions, "consent.changed")] == [False, True]

    # ... and the next text goes out again.
    text = add_nudge(sessions, "sms")
    assert Dispatcher(sessions, TemplateBook(), {}, ORG, PUBLIC, KEY).dispatch(text) == "sent"


def test_start_from_someone_who_never_withdrew_grants_nothing(
    client: httpx.Client, sessions: sessionmaker[Session]
) -> None:
    """Decision: START restores a withdrawal; it is not a new consent (no wording was shown)."""
    seed_person(sessions, consent=("email",))
    before = snapshot(sessions)
    assert post_twilio(client, SMS_PATH, inbound("START")).status_code == 200
    after = snapshot(sessions)
    assert after["consent"] == before["consent"]
    assert after["ledger"] == before["ledger"]
    assert after["suppressions"] == before["suppressions"] == []


@pytest.mark.parametrize("word", ["HELP", "info", " Help "])
def test_help_is_answered_with_who_we_are_and_how_to_stop(
    client: httpx.Client, sessions: sessionmaker[Session], word: str
) -> None:
    seed_person(sessions)
    before = snapshot(sessions)
    answer = post_twilio(client, SMS_PATH, inbound(word))
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/xml")
    text = (
        "Hackney Friends &amp; Neighbours: texts about local meetings and campaigns. "
        "Reply STOP to opt out, START to opt back in."
    )
    assert answer.text == (
        f'<?xml version="1.0" encoding="UTF-8"?><Response><Message>{text}</Message></Response>'
    )
    plain = text.replace("&amp;", "&")
    assert len(plain) <= 160
    gsm7 = set("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNO")
    gsm7 |= set("PQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
    assert set(plain) <= gsm7
    assert snapshot(sessions) == before


def test_a_retried_stop_changes_nothing_even_after_start(
    client: httpx.Client, sessions: sessionmaker[Session]
) -> None:
    seed_person(sessions)
    stop = inbound("STOP")
    assert post_twilio(client, SMS_PATH, stop).status_code == 200
    once = snapshot(sessions)
    assert post_twilio(client, SMS_PATH, stop).status_code == 200
    assert snapshot(sessions) == once

    assert post_twilio(client, SMS_PATH, inbound("START")).status_code == 200
    restored = snapshot(sessions)
    answer = post_twilio(client, SMS_PATH, stop)  # Twilio retries the old STOP late
    assert answer.status_code == 200
    assert snapshot(sessions) == restored
    assert not is_suppressed(sessions, "sms", PHONE)


def test_the_same_stop_delivered_concurrently_is_applied_once(
    api: str, sessions: sessionmaker[Session]
) -> None:
    seed_person(sessions)
    stop = inbound("STOP")

    def post(_: int) -> int:
        with httpx.Client(base_url=api, trust_env=False, timeout=30) as c:
            return post_twilio(c, SMS_PATH, stop).status_code

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(post, range(6))) == [200] * 6
    assert [r.granted for r in consent_rows(sessions, SID, "sms")] == [True, False]
    assert len(ledger(sessions, "consent.changed")) == 1


def test_bad_or_missing_twilio_signatures_are_refused_and_change_nothing(
    client: httpx.Client, api: str, sessions: sessionmaker[Session]
) -> None:
    seed_person(sessions)
    stop = inbound("STOP")
    before = snapshot(sessions)
    signed = twilio_signature(SMS_PATH, stop)
    refused = {
        "no header": post_twilio(client, SMS_PATH, stop, signature=None),
        "empty header": post_twilio(client, SMS_PATH, stop, signature=""),
        "garbage": post_twilio(client, SMS_PATH, stop, signature="bar"),
        "non-ascii": client.post(
            SMS_PATH,
            content=urlencode(stop),
            headers={
                b"X-Twilio-Signature": "ü".encode("latin-1") * 28,
                b"Content-Type": b"application/x-www-form-urlencoded",
            },
        ),
        "other token": post_twilio(
            client, SMS_PATH, stop, signature=twilio_signature(SMS_PATH, stop, "other-token")
        ),
        "the Host we see, not the public URL": post_twilio(
            client,
            SMS_PATH,
            stop,
            signature=str(RequestValidator(AUTH_TOKEN).compute_signature(api + SMS_PATH, stop)),
        ),
        "signed for the status path": post_twilio(
            client, SMS_PATH, stop, signature=twilio_signature(STATUS_PATH, stop)
        ),
        "body changed after signing": post_twilio(
            client, SMS_PATH, {**stop, "From": "+447911654321"}, signature=signed
        ),
        "field added after signing": post_twilio(
            client, SMS_PATH, {**stop, "Extra": "1"}, signature=signed
        ),
        "query added after signing": client.post(
            SMS_PATH + "?x=1",
            content=urlencode(stop),
            headers={
                "X-Twilio-Signature": signed,
                "Content-Type": "application/x-www-form-urlencoded",
            },
        ),
    }
    for case, answer in refused.items():
        assert answer.status_code == 403, case
        assert answer.json()["detail"][0]["field"] == "X-Twilio-Signature", case
        assert PHONE not in answer.text and "STOP" not in answer.text, case
    assert snapshot(sessions) == before


def test_a_signed_query_string_is_part_of_the_url(
    client: httpx.Client, sessions: sessionmaker[Session]
) -> None:
    seed_person(sessions)
    stop = inbound("STOP")
    path = SMS_PATH + "?tenant=hackney&v=1"
    answer = post_twilio(client, path, stop)
    assert answer.status_code == 200
    assert is_suppressed(sessions, "sms", PHONE)


def test_malformed_twilio_requests_are_never_a_500(
    client: httpx.Client, sessions: sessionmaker[Session]
) -> None:
    """Decision: a form that cannot be parsed, or without MessageSid or From, is a 400; a From
    that is no phone number (an alphanumeric sender) is answered 200 and ignored."""
    seed_person(sessions)
    before = snapshot(sessions)

    def signed_raw(body: bytes) -> httpx.Response:
        return client.post(
            SMS_PATH,
            content=body,
            headers={
                "X-Twilio-Signature": "anything",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )

    no_sid = {k: v for k, v in inbound("STOP").items() if "Sid" not in k or k == "AccountSid"}
    no_from = {k: v for k, v in inbound("STOP").items() if k != "From"}
    cases = {
        "invalid UTF-8 escape": (signed_raw(b"Body=%FF%FE&From=%2B447911123456"), 400),
        "raw bytes": (signed_raw(b"\xff\xfe\x00\x01"), 400),
        "too many fields": (signed_raw(b"&".join(b"f%d=1" % i for i in range(600))), 400),
        "too large": (signed_raw(b"Body=" + b"a" * (65 * 1024)), 413),
        "no MessageSid": (post_twilio(client, SMS_PATH, no_sid), 400),
        "odd MessageSid": (post_twilio(client, SMS_PATH, inbound("STOP", sid="SM'; --")), 400),
        "NUL in MessageSid": (post_twilio(client, SMS_PATH, inbound("STOP", sid="SM\x00")), 400),
        "no From": (post_twilio(client, SMS_PATH, no_from), 400),
        "alphanumeric From": (
            post_twilio(client, SMS_PATH, inbound("STOP", sender="CAMPAIGN")),
            200,
        ),
        "WhatsApp From": (
            post_twilio(client, SMS_PATH, inbound("STOP", sender="whatsapp:" + PHONE)),
            200,
        ),
        # From a number nobody has (a known one would get an organiser's task to read it).
        "NUL in Body": (
            post_twilio(client, SMS_PATH, inbound("STOP\x00", sender="+447700900123")),
            200,
        ),
        "JSON body": (
            client.post(
                SMS_PATH,
                json={"From": PHONE, "Body": "STOP"},
                headers={"X-Twilio-Signature": twilio_signature(SMS_PATH, {})},
            ),
            403,
        ),
    }
    for case, (answer, expected) in cases.items():
        assert answer.status_code == expected, (case, answer.text)
        assert PHONE not in answer.text, case
    assert snapshot(sessions) == before


def test_without_an_auth_token_every_twilio_request_is_refused(
    sessions: sessionmaker[Session], serve: Serve
) -> None:
    seed_person(sessions)
    before = snapshot(sessions)
    stop = inbound("STOP")
    with serve(router_app(sessions, twilio_auth_token=None)) as c:
        for path in (SMS_PATH, STATUS_PATH):
            answer = post_twilio(c, path, stop)
            assert answer.status_code == 403
            assert answer.json()["detail"][0]["reason"] == "the Twilio webhook is not configured"
    assert snapshot(sessions) == before


# === Twilio: status callbacks =================================================================


def test_the_documented_sent_callback_moves_the_nudge_and_reports_it(
    client: httpx.Client, sessions: sessionmaker[Session]
) -> None:
    params = fixture_json("twilio_status_callback_sent_docs_example.json")
    seed_person(sessions)
    nudge_id = add_nudge(
        sessions, "sms", provider="twilio", provider_message_id=params["MessageSid"]
    )
    answer = post_twilio(client, STATUS_PATH, params)
    assert answer.status_code == 200
    row = nudge(sessions, nudge_id)
    assert row.delivery_status == "sent"
    assert row.delivery_updated_at is not None
    assert row.status == "sent"  # the sender's own state is not the webhook's to change
    (event,) = ledger(sessions, "message.status")
    assert event["nudge_id"] == nudge_id
    assert event["supporter_id"] == SID
    assert (event["status"], event["provider"], event["provider_message_id"]) == (
        "sent",
        "twilio",
        params["MessageSid"],
    )


@pytest.mark.parametrize(
    ("sequence", "final", "reported"),
    [
        (["delivered", "sent"], "delivered", ["delivered"]),
        (["failed", "delivered"], "failed", ["failed"]),
        (["delivered", "undelivered", "failed"], "delivered", ["delivered"]),
        (["queued", "sending", "sent", "delivered"], "delivered", ["queued", "sent", "delivered"]),
        (["sent", "sent", "queued", "sending"], "sent", ["sent"]),
        (["sending"], "sending", []),
        (["delivered", "read", "delivered"], "read", ["delivered", "opened"]),
        (["failed", "read"], "failed", ["failed"]),
    ],
)
def test_status_callbacks_never_move_backwards(
    client: httpx.Client,
    sessions: sessionmaker[Session],
    sequence: list[str],
    final: str,
    reported: list[str],
) -> None:
    seed_person(sessions)
    message_sid = f"SM{uuid.uuid4().hex}"
    nudge_id = add_nudge(sessions, "sms", provider="twilio", provider_message_id=message_sid)
    for status in sequence:
        before = snapshot(sessions)
        current = nudge(sessions, nudge_id).delivery_status
        assert (
            post_twilio(client, STATUS_PATH, status_callback(message_sid, status)).status_code
            == 200
        )
        if nudge(sessions, nudge_id).delivery_status == current:
            assert snapshot(sessions) == before  # no move: nothing changed at all
    assert nudge(sessions, nudge_id).delivery_status == final
    assert [e["status"] for e in ledger(sessions, "message.status")] == reported


STATUSES = ["queued", "sending", "sent", "delivered", "undelivered", "failed"]
TERMINAL = {"delivered", "undelivered", "failed"}


@hypothesis_settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(sequence=st.lists(st.sampled_from(STATUSES), min_size=1, max_size=6))
def test_any_order_of_callbacks_ends_at_the_first_terminal_or_the_furthest_status(
    client: httpx.Client, sessions: sessionmaker[Session], sequence: list[str]
) -> None:
    """Whatever order (and repeats) the callbacks come in: the delivery status only moves
    forwards, the first terminal status to arrive stays, and each move but 'sending' is
    reported exactly once."""
    sid = "sup_" + uuid.uuid4().hex
    with sessions.begin() as session:
        session.add(Supporter(supporter_id=sid, phone=PHONE))
    message_sid = f"SM{uuid.uuid4().hex}"
    nudge_id = add_nudge(
        sessions, "sms", sid=sid, provider="twilio", provider_message_id=message_sid
    )
    seen: list[str] = []
    for status in sequence:
        assert (
            post_twilio(client, STATUS_PATH, status_callback(message_sid, status)).status_code
            == 200
        )
        current = nudge(sessions, nudge_id).delivery_status
        assert current is not None
        if seen:
            assert TWILIO_RANK[current] >= TWILIO_RANK[seen[-1]]
        seen.append(current)
    terminal = [s for s in sequence if s in TERMINAL]
    expected = terminal[0] if terminal else max(sequence, key=TWILIO_RANK.__getitem__)
    assert seen[-1] == expected
    moves = [b for a, b in zip([None, *seen], seen, strict=False) if a != b]
    with sessions() as session:
        reported = [
            json.loads(p)["status"]
            for p in session.scalars(
                select(LedgerEvent.payload)
                .where(LedgerEvent.topic == "message.status", LedgerEvent.key == sid)
                .order_by(LedgerEvent.seq)
            )
        ]
    assert reported == [m for m in moves if m != "sending"]


def test_every_documented_twilio_status_is_answered_200(
    client: httpx.Client, sessions: sessionmaker[Session]
) -> None:
    values = fixture_json("twilio_reference_values.json")["MessageStatus_values"]
    seed_person(sessions)
    for status in values:
        message_sid = f"SM{uuid.uuid4().hex}"
        nudge_id = add_nudge(sessions, "sms", provider="twilio", provider_message_id=message_sid)
        answer = post_twilio(client, STATUS_PATH, status_callback(message_sid, status))
        assert answer.status_code == 200, status
        tracked = status in TWILIO_RANK
        assert (nudge(sessions, nudge_id).delivery_status == status) is tracked, status


def test_error_21610_suppresses_the_recipients_phone_once(
    client: httpx.Client, sessions: sessionmaker[Session]
) -> None:
    seed_person(sessions)
    message_sid = f"SM{uuid.uuid4().hex}"
    nudge_id = add_nudge(sessions, "sms", provider="twilio", provider_message_id=message_sid)
    failed = status_callback(message_sid, "failed", "21610")
    assert post_twilio(client, STATUS_PATH, failed).status_code == 200
    assert nudge(sessions, nudge_id).delivery_status == "failed"
    assert is_suppressed(sessions, "sms", PHONE)
    row = suppression_row(sessions, "sms", PHONE)
    assert row.reason == "Twilio 21610: recipient opted out"
    (event,) = ledger(sessions, "message.status")
    assert (event["status"], event["error_code"]) == ("failed", "21610")

    # The person texts START; Twilio's late retry of the same callback does not undo it.
    assert post_twilio(client, SMS_PATH, inbound("START")).status_code == 200
    assert not is_suppressed(sessions, "sms", PHONE)
    lifted = snapshot(sessions)
    assert post_twilio(client, STATUS_PATH, failed).status_code == 200
    assert snapshot(sessions) == lifted


def test_other_error_codes_do_not_suppress(
    client: httpx.Client, sessions: sessionmaker[Session]
) -> None:
    seed_person(sessions)
    message_sid = f"SM{uuid.uuid4().hex}"
    add_nudge(sessions, "sms", provider="twilio", provider_message_id=message_sid)
    for code in ("30007", "30003", "not-a-code"):
        callback = status_callback(message_sid, "undelivered", code)
        assert post_twilio(client, STATUS_PATH, callback).status_code == 200
    assert not is_suppressed(sessions, "sms", PHONE)
    (event,) = ledger(sessions, "message.status")
    assert (event["status"], event["error_code"]) == ("undelivered", "30007")


def test_unknown_messages_and_bad_callbacks_change_nothing(
    client: httpx.Client, sessions: sessionmaker[Session]
) -> None:
    seed_person(sessions)
    message_sid = f"SM{uuid.uuid4().hex}"
    add_nudge(sessions, "sms", provider="twilio", provider_message_id=message_sid)
    add_nudge(sessions, "sms", provider="fake", provider_message_id="SMother")
    before = snapshot(sessions)
    cases = {
        "unknown sid": (
            post_twilio(client, STATUS_PATH, status_callback("SMnope", "delivered")),
            200,
        ),
        "another provider's message": (
            post_twilio(client, STATUS_PATH, status_callback("SMother", "delivered")),
            200,
        ),
        "unknown status": (
            post_twilio(client, STATUS_PATH, status_callback(message_sid, "teleported")),
            200,
        ),
        "no status": (
            post_twilio(client, STATUS_PATH, {"MessageSid": message_sid}),
            400,
        ),
        "no sid": (post_twilio(client, STATUS_PATH, {"MessageStatus": "delivered"}), 400),
        "bad signature": (
            post_twilio(
                client, STATUS_PATH, status_callback(message_sid, "delivered"), signature="bar"
            ),
            403,
        ),
        "unsigned 21610": (
            post_twilio(
                client,
                STATUS_PATH,
                status_callback(message_sid, "failed", "21610"),
                signature=None,
            ),
            403,
        ),
    }
    for case, (answer, expected) in cases.items():
        assert answer.status_code == expected, case
    assert snapshot(sessions) == before


# === SendGrid: signatures =====================================================================


@pytest.mark.parametrize(
    "vector_file",
    ["sendgrid_signed_event_dropped.vector.json", "sendgrid_signed_test_event_legacy.vector.json"],
)
def test_published_sendgrid_vectors_verify_the_way_the_app_verifies(vector_file: str) -> None:
    vector = fixture_json(vector_file)
    body = (FIXTURES / vector["body_file"]).read_bytes()
    signature = vector["headers"][SG_SIGNATURE]
    timestamp = vector["headers"][SG_TIMESTAMP]
    verifier = EventWebhook(vector["public_key_b64_der_spki"])
    assert sendgrid_signature_valid(verifier, body, signature, timestamp)
    for case in vector["negative_cases"]:
        key = case.get("public_key_b64_der_spki", vector["public_key_b64_der_spki"])
        raw = case["raw_body"].encode() if "raw_body" in case else body
        if case["name"] == "body_without_trailing_crlf":
            assert body.endswith(b"\r\n")
            raw = body[:-2]
        assert not sendgrid_signature_valid(
            EventWebhook(key),
            raw,
            case.get("signature", signature),
            case.get("timestamp", timestamp),
        ), case["name"]
    for garbage in ("!!!", "abc", "", "MEUC"):  # the SDK raises on these; the app says False
        assert not sendgrid_signature_valid(verifier, body, garbage, timestamp)


def test_the_published_signed_batch_is_accepted_only_while_fresh(
    sessions: sessionmaker[Session], client: httpx.Client, serve: Serve
) -> None:
    """SendGrid's signed 'dropped' sample verifies, but its timestamp is from 2020: at that
    time (the router's clock) it is applied; now, or long before, it is refused."""
    vector = fixture_json("sendgrid_signed_event_dropped.vector.json")
    body = (FIXTURES / vector["body_file"]).read_bytes()
    headers = {**vector["headers"], "Content-Type": "application/json"}
    signed_at = datetime.fromtimestamp(int(headers[SG_TIMESTAMP]), UTC)
    before = snapshot(sessions)

    assert client.post(SENDGRID_PATH, content=body, headers=headers).status_code == 403  # the app
    for clock_at in (signed_at + timedelta(days=2000), signed_at - timedelta(days=1)):
        app = router_app(
            sessions,
            clock=stopped(clock_at),
            sendgrid_public_key=vector["public_key_b64_der_spki"],
        )
        with serve(app) as c:
            answer = c.post(SENDGRID_PATH, content=body, headers=headers)
        assert answer.status_code == 403
        assert answer.json()["detail"][0]["field"] == "timestamp"
    assert snapshot(sessions) == before

    app = router_app(
        sessions,
        clock=stopped(signed_at + timedelta(seconds=5)),
        sendgrid_public_key=vector["public_key_b64_der_spki"],
    )
    with serve(app) as c:
        answer = c.post(SENDGRID_PATH, content=body, headers=headers)
        assert answer.status_code == 200
        assert answer.json() == {"applied": 1, "duplicates": 0, "skipped": []}
        # without its CRLF the same bytes no longer verify
        stripped = c.post(SENDGRID_PATH, content=body[:-2], headers=headers)
        assert stripped.status_code == 403
    assert is_suppressed(sessions, "email", "hello@world.com")  # dropped: Bounced Address
    assert (
        suppression_row(sessions, "email", "hello@world.com").reason == "dropped: Bounced Address"
    )


# === SendGrid: events =========================================================================


def all_events(nudge_id: str | None, *, unique_ids: bool = True) -> list[dict[str, Any]]:
    """SendGrid's published sample of every event kind, with our custom argument added, and
    (unless told otherwise) an sg_event_id of its own per event in place of the placeholder."""
    events = fixture_json("sendgrid_event_webhook_all_events.json")
    for index, event in enumerate(events):
        if nudge_id is not None:
            event["nudge_id"] = nudge_id
        if unique_ids:
            event["sg_event_id"] = f"evt-{uuid.uuid4().hex[:8]}-{index}"
    return list(events)


SAMPLE_EMAIL = "example@test.com"


def test_every_kind_of_event_in_the_published_sample_is_applied(
    client: httpx.Client,
    sessions: sessionmaker[Session],
    sendgrid_key: ec.EllipticCurvePrivateKey,
) -> None:
    seed_person(sessions, email=SAMPLE_EMAIL)
    nudge_id = add_nudge(
        sessions,
        "email",
        provider="sendgrid",
        provider_message_id="sg_message_id",
        template="welcome",
    )
    answer = post_sendgrid(client, sendgrid_key, all_events(nudge_id))
    assert answer.status_code == 200
    assert answer.json() == {
        "applied": 10,
        "duplicates": 0,
        "skipped": [{"index": 10, "reason": "event not handled: group_resubscribe"}],
    }
    row = nudge(sessions, nudge_id)
    # processed -> deferred -> delivered; the bounce and drop that follow do not replace it.
    assert row.delivery_status == "delivered"
    statuses = [(e["status"], e["provider"]) for e in ledger(sessions, "message.status")]
    assert statuses == [
        ("queued", "sendgrid"),
        ("deferred", "sendgrid"),
        ("delivered", "sendgrid"),
        ("opened", "sendgrid"),
        ("spamreport", "sendgrid"),
        ("unsubscribed", "sendgrid"),
        ("unsubscribed", "sendgrid"),
    ]
    (click,) = ledger(sessions, "email.clicked")
    assert (click["supporter_id"], click["nudge_id"], click["url"]) == (
        SID,
        nudge_id,
        "http://www.sendgrid.com/",
    )
    assert click["event_time"].startswith("2017-12-15")  # when it happened, not when told
    withdrawals = [
        (r.granted, r.source) for r in consent_rows(sessions, SID, "email") if not r.granted
    ]
    assert withdrawals == [
        (False, "sendgrid:spamreport"),
        (False, "sendgrid:unsubscribe"),
        (False, "sendgrid:group_unsubscribe"),
    ]
    assert consent_rows(sessions, SID, "sms")[-1].granted is True
    assert is_suppressed(sessions, "email", SAMPLE_EMAIL)
    assert suppression_row(sessions, "email", SAMPLE_EMAIL).source == "sendgrid:bounce"

    # The next email to them is refused by the dispatcher.
    nxt = add_nudge(sessions, "email", template="welcome")
    assert Dispatcher(sessions, TemplateBook(), {}, ORG, PUBLIC, KEY).dispatch(nxt) == "skipped"


def test_the_published_sample_as_is_shares_one_placeholder_event_id(
    client: httpx.Client,
    sessions: sessionmaker[Session],
    sendgrid_key: ec.EllipticCurvePrivateKey,
) -> None:
    """Every event in the sample says ``"sg_event_id": "sg_event_id"``: the first applies and
    the rest count as repeats of it, which is what deduplicating on sg_event_id means."""
    seed_person(sessions, email=SAMPLE_EMAIL)
    nudge_id = add_nudge(sessions, "email", provider="sendgrid", template="welcome")
    answer = post_sendgrid(client, sendgrid_key, all_events(nudge_id, unique_ids=False))
    assert answer.json() == {
        "applied": 1,
        "duplicates": 9,
        "skipped": [{"index": 10, "reason": "event not handled: group_resubscribe"}],
    }
    assert nudge(sessions, nudge_id).delivery_status == "processed"


def test_a_repeated_batch_changes_nothing(
    client: httpx.Client,
    sessions: sessionmaker[Session],
    sendgrid_key: ec.EllipticCurvePrivateKey,
) -> None:
    seed_person(sessions, email=SAMPLE_EMAIL)
    nudge_id = add_nudge(sessions, "email", provider="sendgrid", template="welcome")
    batch = all_events(nudge_id)
    no_event_id = {k: v for k, v in batch[4].items() if k != "sg_event_id"}  # a click
    batch.append(no_event_id)
    first = post_sendgrid(client, sendgrid_key, batch)
    assert first.json()["applied"] == 11
    once = snapshot(sessions)
    again = post_sendgrid(client, sendgrid_key, batch)
    assert again.status_code == 200
    assert again.json()["applied"] == 0
    assert again.json()["duplicates"] == 11
    assert snapshot(sessions) == once
    assert len(ledger(sessions, "email.clicked")) == 2  # by sg_event_id, and by the fallback


def test_bounces_and_drops_suppress_only_when_the_address_is_bad(
    client: httpx.Client,
    sessions: sessionmaker[Session],
    sendgrid_key: ec.EllipticCurvePrivateKey,
) -> None:
    examples = fixture_json("sendgrid_event_webhook_per_event_examples.json")
    cases = [
        ("blocked", examples["blocked"][0], "blocked@example.org", False),
        ("hard bounce", examples["bounce"][0], "gone@example.org", True),
        (
            "dropped: invalid",
            {**examples["dropped"][0], "reason": "Invalid"},
            "bad@example.org",
            False,
        ),
        (
            "dropped: unsubscribed",
            {**examples["dropped"][0], "reason": "Unsubscribed Address"},
            "unsub@example.org",
            True,
        ),
        (
            "dropped: spam",
            {**examples["dropped"][0], "reason": "Spam Reporting Address"},
            "spam@example.org",
            True,
        ),
    ]
    batch = []
    for n, (_, example, address, _) in enumerate(cases):
        sid = f"sup_{n:032x}"
        seed_person(sessions, sid, email=address, phone=None)
        nudge_id = add_nudge(sessions, "email", sid=sid, provider="sendgrid", template="welcome")
        batch.append({**example, "email": address, "nudge_id": nudge_id, "sg_event_id": f"e{n}"})
    answer = post_sendgrid(client, sendgrid_key, batch)
    assert answer.json() == {"applied": 5, "duplicates": 0, "skipped": []}
    for name, _, address, suppresses in cases:
        assert is_suppressed(sessions, "email", address) is suppresses, name
    statuses = [e["status"] for e in ledger(sessions, "message.status")]
    assert statuses == ["bounced", "bounced", "dropped", "dropped", "dropped"]


def test_an_unsubscribe_without_a_nudge_reaches_everyone_with_the_address(
    client: httpx.Client,
    sessions: sessionmaker[Session],
    sendgrid_key: ec.EllipticCurvePrivateKey,
) -> None:
    """No nudge_id (say, a message sent before the custom argument): the supporter linked to
    the address and an older row holding it in its email column both withdraw."""
    seed_person(sessions, SID, email=EMAIL)
    seed_person(sessions, OTHER, email=EMAIL, phone=None, link=False)
    item = {
        "email": "Jo.Bloggs@Example.org",
        "event": "unsubscribe",
        "sg_event_id": "u1",
        "sg_message_id": "unknown.filter1",
        "timestamp": int(datetime.now(UTC).timestamp()),
    }
    answer = post_sendgrid(client, sendgrid_key, [item])
    assert answer.json() == {"applied": 1, "duplicates": 0, "skipped": []}
    assert consent_rows(sessions, SID, "email")[-1].source == "sendgrid:unsubscribe"
    assert consent_rows(sessions, OTHER, "email")[-1].granted is False
    assert is_suppressed(sessions, "email", EMAIL)
    assert ledger(sessions, "message.status") == []


def test_the_nudge_is_found_by_the_message_id_when_the_custom_argument_is_missing(
    client: httpx.Client,
    sessions: sessionmaker[Session],
    sendgrid_key: ec.EllipticCurvePrivateKey,
) -> None:
    seed_person(sessions)
    nudge_id = add_nudge(
        sessions, "email", provider="sendgrid", provider_message_id="LRzXl_NHStOGhQ4kofSm_A"
    )
    item = {
        "email": EMAIL,
        "event": "delivered",
        "sg_event_id": "d1",
        "sg_message_id": "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0",  # noqa: E501
        "timestamp": int(datetime.now(UTC).timestamp()),
    }
    assert post_sendgrid(client, sendgrid_key, [item]).json()["applied"] == 1
    assert nudge(sessions, nudge_id).delivery_status == "delivered"


def test_items_that_cannot_be_applied_are_skipped_and_reported(
    client: httpx.Client,
    sessions: sessionmaker[Session],
    sendgrid_key: ec.EllipticCurvePrivateKey,
) -> None:
    seed_person(sessions)
    sms_nudge = add_nudge(sessions, "sms", provider="twilio", provider_message_id="SM1")
    twilio_email = add_nudge(sessions, "email", provider="other", template="welcome")
    good = add_nudge(sessions, "email", provider="sendgrid", template="welcome")
    now = int(datetime.now(UTC).timestamp())
    batch: list[Any] = [
        1,
        "delivered",
        None,
        [],
        {},
        {"event": 5, "sg_event_id": "x"},
        {"event": "delivered"},  # no id at all
        {"event": "delivered", "sg_event_id": "a", "nudge_id": "no-such-nudge"},
        {"event": "click", "sg_event_id": "b", "email": EMAIL},
        {"event": "open", "sg_event_id": "c", "nudge_id": sms_nudge},
        {"event": "delivered", "sg_event_id": "d", "nudge_id": twilio_email},
        {"event": "group_resubscribe", "sg_event_id": "e", "nudge_id": good},
        {"event": "Bounce <script>", "sg_event_id": "f"},
        {"event": "unsubscribe", "sg_event_id": "g", "email": "not an address"},
        {"event": "delivered", "sg_event_id": "h", "nudge_id": "\x00"},
        {"event": "delivered", "sg_event_id": "i" * 5000, "nudge_id": good, "timestamp": now},
    ]
    before = snapshot(sessions)
    answer = post_sendgrid(client, sendgrid_key, batch)
    assert answer.status_code == 200
    summary = answer.json()
    assert summary["applied"] == 1  # only the last, whose very long id is hashed
    assert summary["duplicates"] == 0
    assert summary["skipped"] == [
        {"index": 0, "reason": "not a JSON object"},
        {"index": 1, "reason": "not a JSON object"},
        {"index": 2, "reason": "not a JSON object"},
        {"index": 3, "reason": "not a JSON object"},
        {"index": 4, "reason": "no event"},
        {"index": 5, "reason": "no event"},
        {"index": 6, "reason": "no sg_event_id, nor sg_message_id with timestamp"},
        {"index": 7, "reason": "unknown nudge"},
        {"index": 8, "reason": "unknown nudge"},
        {"index": 9, "reason": "unknown nudge"},
        {"index": 10, "reason": "unknown nudge"},
        {"index": 11, "reason": "event not handled: group_resubscribe"},
        {"index": 12, "reason": "event not handled: ?"},
        {"index": 13, "reason": "unknown nudge and no valid email"},
        {"index": 14, "reason": "unknown nudge"},
    ]
    assert EMAIL not in answer.text
    after = snapshot(sessions)
    assert after["webhook_receipts"] == before["webhook_receipts"] + 1
    assert nudge(sessions, good).delivery_status == "delivered"


def test_bad_signed_requests_are_refused_and_change_nothing(
    client: httpx.Client,
    sessions: sessionmaker[Session],
    sendgrid_key: ec.EllipticCurvePrivateKey,
) -> None:
    seed_person(sessions, email=SAMPLE_EMAIL)
    nudge_id = add_nudge(sessions, "email", provider="sendgrid", template="welcome")
    body = json.dumps(all_events(nudge_id)).encode()
    now = int(datetime.now(UTC).timestamp())
    stamp = str(now)
    signed = sign_sendgrid(sendgrid_key, stamp, body)
    other_key = ec.generate_private_key(ec.SECP256R1())

    def post(content: bytes, headers: dict[str, str]) -> httpx.Response:
        return client.post(SENDGRID_PATH, content=content, headers=headers)

    def headers(signature: str | None = signed, timestamp: str | None = stamp) -> dict[str, str]:
        sent = {"Content-Type": "application/json"}
        if signature is not None:
            sent[SG_SIGNATURE] = signature
        if timestamp is not None:
            sent[SG_TIMESTAMP] = timestamp
        return sent

    def resigned(at: int) -> dict[str, str]:
        return headers(sign_sendgrid(sendgrid_key, str(at), body), str(at))

    before = snapshot(sessions)
    cases = {
        "tampered body": post(body.replace(b"delivered", b"bounce", 1), headers()),
        "body with a byte added": post(body + b" ", headers()),
        "other key": post(body, headers(sign_sendgrid(other_key, stamp, body))),
        "timestamp changed": post(body, headers(timestamp=str(now - 1))),
        "stale timestamp": post(body, resigned(now - 601)),
        "future timestamp": post(body, resigned(now + 120)),
        "timestamp not a number": post(body, headers(timestamp="12.5")),
        "timestamp in other digits": client.post(
            SENDGRID_PATH,
            content=body,
            headers={
                SG_SIGNATURE.encode(): signed.encode(),
                SG_TIMESTAMP.encode(): "²١٢٣".encode(),
            },
        ),
        "timestamp with sign": post(body, headers(timestamp=f"+{now}")),
        "malformed base64": post(body, headers(signature="!!!not base64!!!")),
        "bad base64 padding": post(body, headers(signature="abc")),
        "base64 of garbage": post(body, headers(signature=base64.b64encode(b"garbage").decode())),
        "non-ascii signature": client.post(
            SENDGRID_PATH,
            content=body,
            headers={
                SG_SIGNATURE.encode(): "ü".encode("latin-1") * 10,
                SG_TIMESTAMP.encode(): stamp.encode(),
            },
        ),
        "no signature": post(body, headers(signature=None)),
        "no timestamp": post(body, headers(timestamp=None)),
        "no headers": post(body, {"Content-Type": "application/json"}),
        "not UTF-8 but signed": post(
            b"\xff\xfe[]", headers(sign_sendgrid(sendgrid_key, stamp, b"\xff\xfe[]"))
        ),
    }
    for case, answer in cases.items():
        assert answer.status_code == 403, (case, answer.text)
        assert SAMPLE_EMAIL not in answer.text
    assert snapshot(sessions) == before

    # At the edges of the window: 600 s old and 60 s ahead are still accepted.
    for at in (now - 590, now + 50):
        assert post(
            b"[]", headers(sign_sendgrid(sendgrid_key, str(at), b"[]"), str(at))
        ).json() == {
            "applied": 0,
            "duplicates": 0,
            "skipped": [],
        }


def test_a_verified_body_that_is_not_an_array_is_a_400(
    client: httpx.Client,
    sessions: sessionmaker[Session],
    sendgrid_key: ec.EllipticCurvePrivateKey,
) -> None:
    before = snapshot(sessions)
    for raw, reason in (
        (b'{"event": "delivered"}', "a JSON array of events is required"),
        (b'"delivered"', "a JSON array of events is required"),
        (b"null", "a JSON array of events is required"),
        (b"[{", "malformed JSON"),
        (b"", "malformed JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed JSON"),
        (b'[{"timestamp": 1' + b"0" * 5000 + b"}]", "malformed JSON"),
    ):
        answer = post_sendgrid(client, sendgrid_key, body=raw)
        assert answer.status_code == 400, raw[:20]
        assert answer.json() == {"detail": [{"field": "body", "reason": reason}]}
    assert snapshot(sessions) == before


def test_without_a_public_key_every_sendgrid_request_is_refused(
    sessions: sessionmaker[Session], sendgrid_key: ec.EllipticCurvePrivateKey, serve: Serve
) -> None:
    before = snapshot(sessions)
    for key in (None, "", "not a key", base64.b64encode(b"junk").decode()):
        with serve(router_app(sessions, sendgrid_public_key=key)) as c:
            answer = post_sendgrid(c, sendgrid_key, [])
        assert answer.status_code == 403
        assert answer.json()["detail"][0]["reason"] == "the SendGrid webhook is not configured"
    assert snapshot(sessions) == before


# === the app ==================================================================================


def test_the_openapi_document_lists_the_three_webhooks(client: httpx.Client) -> None:
    document = client.get("/openapi.json").json()
    for path in (SMS_PATH, STATUS_PATH, SENDGRID_PATH):
        operation = document["paths"][path]["post"]
        assert operation["tags"] == ["webhooks"]
        assert "403" in operation["responses"]
    form = document["paths"][SMS_PATH]["post"]["requestBody"]["content"]
    assert "application/x-www-form-urlencoded" in form
    sendgrid = document["paths"][SENDGRID_PATH]["post"]["requestBody"]["content"]
    assert sendgrid["application/json"]["schema"]["type"] == "array"


def test_no_address_number_or_message_body_reaches_the_logs(
    sessions: sessionmaker[Session], sendgrid_key: ec.EllipticCurvePrivateKey, serve: Serve
) -> None:
    seed_person(sessions)
    nudge_id = add_nudge(sessions, "email", provider="sendgrid", template="welcome")
    app = router_app(sessions, sendgrid_public_key=public_key_b64(sendgrid_key))
    with capture_logs() as logs, serve(app) as c:
        post_twilio(c, SMS_PATH, inbound("STOP"))
        post_twilio(c, SMS_PATH, inbound("Please call me back on 07911 123456"))
        post_twilio(c, SMS_PATH, inbound("STOP", sender="CAMPAIGN"))
        post_twilio(c, SMS_PATH, inbound("STOP"), signature="bar")
        item = {"email": EMAIL, "event": "unsubscribe", "sg_event_id": "z", "nudge_id": nudge_id}
        post_sendgrid(c, sendgrid_key, [item, {"event": "click", "email": EMAIL}])
    assert len(logs) >= 5
    text = repr(logs)
    for personal in (PHONE, "07911", EMAIL, "jo.bloggs", "Please call", "CAMPAIGN"):
        assert personal not in text


def test_a_sendgrid_event_settles_an_ambiguous_send_as_sent(
    client: httpx.Client,
    sessions: sessionmaker[Session],
    sendgrid_key: ec.EllipticCurvePrivateKey,
) -> None:
    seed_person(sessions, email=SAMPLE_EMAIL)
    nudge_id = add_nudge(sessions, "email", template="welcome")
    with sessions.begin() as session:
        session.execute(
            update(Nudge)
            .where(Nudge.nudge_id == nudge_id)
            .values(status="ambiguous", reason_code="no_answer", sending_since=datetime.now(UTC))
        )
    delivered = {
        "email": SAMPLE_EMAIL,
        "timestamp": int(datetime.now(UTC).timestamp()),
        "event": "delivered",
        "sg_event_id": f"ev-{uuid.uuid4().hex}",
        "sg_message_id": "abc123.filter0001.16648.5515E0B88.0",
        "nudge_id": nudge_id,
    }
    assert post_sendgrid(client, sendgrid_key, [delivered]).json()["applied"] == 1
    row = nudge(sessions, nudge_id)
    assert (row.status, row.reason_code, row.provider_message_id) == (
        "sent",
        "confirmed",
        "abc123",
    )
    assert row.delivery_status == "delivered"
    states = [e["status"] for e in ledger(sessions, "message.status") if e["nudge_id"] == nudge_id]
    assert sorted(states) == ["delivered", "sent"]
