"""Sending failures end to end: the real Dispatcher and SDK senders against the stub providers,
on both databases: retries and backoff, refusals, ambiguous sends, STOP replies, racing senders.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from typing import Any, Literal, TypeVar

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from consumers.dispatch import Dispatcher, SendingPolicy
from consumers.messages import Sender
from consumers.policy import ChannelPolicy
from consumers.providers import SendGridEmailSender, TwilioSmsSender
from consumers.ratelimit import RateLimit
from consumers.rendering import TemplateBook
from consumers.repository import has_consent, store_nudges
from infra.consent import suppressed
from infra.db import (
    ConsentRecord,
    LedgerEvent,
    Nudge,
    OutboxMessage,
    Suppression,
    make_engine,
    session_factory,
)
from tests.factories import add_supporter, nudge_request
from tests.stub_providers import SENDGRID_PATH, StubProviders

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
LINK_KEY = "test-link-key"
API_KEY = "SG.test-key-not-secret"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-test-token"
FROM_NUMBER = "+447700900000"
TIMEOUT_S = 10.0
"""The senders' HTTP timeout: generous, so a busy machine never turns a send ambiguous..."""
SHORT_TIMEOUT_S = 0.25
"""... except where a test wants it to: the stub's delayed answer takes longer than this."""

Channel = Literal["email", "sms"]
T = TypeVar("T")


# --- time -------------------------------------------------------------------------------------


class Clock:
    """The dispatcher's clock: stands still until a test moves it."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class FakeMonotonic:
    """A RateLimit's clock and sleep: a sleep records the wait and moves the clock on."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def limit(self, rate: float = 1000.0) -> RateLimit:
        return RateLimit(rate, clock=self.clock, sleep=self.sleep)


# --- providers --------------------------------------------------------------------------------


@pytest.fixture
def stub(stub_providers: StubProviders) -> StubProviders:
    return stub_providers


def sendgrid(url: str, timeout_s: float = TIMEOUT_S) -> SendGridEmailSender:
    return SendGridEmailSender(
        API_KEY, "hello@example.org", "Grassroots Together", host=url, timeout_s=timeout_s
    )


def twilio(url: str, timeout_s: float = TIMEOUT_S) -> TwilioSmsSender:
    return TwilioSmsSender(ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, base_url=url, timeout_s=timeout_s)


def sender_for(channel: Channel, url: str, timeout_s: float = TIMEOUT_S) -> Sender:
    return sendgrid(url, timeout_s) if channel == "email" else twilio(url, timeout_s)


def closed_port_url() -> str:
    """A loopback URL nobody listens on: connecting is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def twilio_error(code: int, status: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def sent_to_stub(stub: StubProviders) -> list[str]:
    """Who each request to the stub was for: the nudge id of an email (its custom arg), the
    number of an SMS; lookups are left out."""
    found = []
    for request in stub.requests:
        if request.method != "POST":
            continue  # a lookup, not a send
        if request.path == SENDGRID_PATH:
            found.append(str(request.json()["custom_args"]["nudge_id"]))
        else:
            found.append(request.form()["To"])
    return found


# --- the database -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def templates() -> TemplateBook:
    return TemplateBook()


def supporter_id(n: int) -> str:
    return f"sup_{n:032x}"


def phone(n: int) -> str:
    return f"+4477009{n:05d}"


def email(n: int) -> str:
    return f"supporter{n}@example.org"


def seed(
    sessions: sessionmaker[Session],
    people: int,
    nudges: Sequence[tuple[str, int, Channel]],
    consent: tuple[Channel, ...] = ("email", "sms"),
) -> None:
    """``people`` supporters (1..people) with both addresses and consents, and the nudges
    (id, supporter number, channel), all requested at T0."""
    with sessions.begin() as session:
        for n in range(1, people + 1):
            add_supporter(
                session,
                supporter_id(n),
                email=email(n),
                phone=phone(n),
                consent=consent,
                consented_at=T0 - timedelta(days=1),
            )
        store_nudges(
            session,
            [
                nudge_request(nudge_id, supporter_id(n), channel, T0, context={"area": "Hackney"})
                for nudge_id, n, channel in nudges
            ],
        )


def nudge_row(sessions: sessionmaker[Session], nudge_id: str) -> Nudge:
    with sessions() as session:
        row = session.get(Nudge, nudge_id)
        assert row is not None
        return row


def not_before(sessions: sessionmaker[Session], nudge_id: str) -> datetime:
    when = nudge_row(sessions, nudge_id).not_before
    assert when is not None
    return when


def ledger(sessions: sessionmaker[Session], topic: str) -> list[dict[str, Any]]:
    with sessions() as session:
        rows = session.scalars(
            select(LedgerEvent).where(LedgerEvent.topic == topic).order_by(LedgerEvent.seq)
        )
        return [json.loads(row.payload) for row in rows]


def decisions(sessions: sessionmaker[Session], nudge_id: str) -> list[tuple[str, str | None]]:
    """The (status, reason_code) of each message.status event written for the nudge."""
    return [
        (e["status"], e["reason_code"])
        for e in ledger(sessions, "message.status")
        if e["nudge_id"] == nudge_id
    ]


def make_dispatcher(
    sessions: sessionmaker[Session],
    templates: TemplateBook,
    senders: dict[str, Sender],
    clock: Clock | None = None,
    policy: SendingPolicy | None = None,
    limits: dict[str, RateLimit] | None = None,
) -> Dispatcher:
    return Dispatcher(
        sessions,
        templates,
        senders,
        "Grassroots Together",
        "http://x.test",
        link_key=LINK_KEY,
        policy=policy or SendingPolicy(),
        limits=limits or {},
        clock=clock or Clock(),
    )


# --- 429: the provider's Retry-After, then the rate limit -------------------------------------


def test_sendgrid_429_waits_for_retry_after_then_sends_once(
    sessions: sessionmaker[Session], templates: TemplateBook, stub: StubProviders
) -> None:
    seed(sessions, 1, [("n1", 1, "email")])
    clock, mono = Clock(), FakeMonotonic()
    limit = mono.limit()
    policy = SendingPolicy(backoff_s=1.0)  # shorter than Retry-After: the provider's wait wins
    stage = make_dispatcher(
        sessions, templates, {"email": sendgrid(stub.url)}, clock, policy, {"email": limit}
    )
    stub.script(429, headers={"Retry-After": "7"}, body={"errors": [{"message": "too many"}]})

    assert stage.dispatch("n1") == "pending"

    row = nudge_row(sessions, "n1")
    assert (row.status, row.attempts, row.reason_code) == ("pending", 1, "retrying")
    assert row.reason is not None and "HTTP 429" in row.reason and "attempt 1 of 6" in row.reason
    assert row.not_before == T0 + timedelta(seconds=7)
    # The pause is the account's: the next call on the channel waits it out.
    assert limit.acquire() == pytest.approx(7.0)

    assert stage.dispatch_pending() == 0  # not due yet
    clock.now = T0 + timedelta(seconds=6.9)
    assert stage.dispatch_pending() == 0
    assert len(stub.requests) == 1

    clock.now = T0 + timedelta(seconds=7)
    assert stage.dispatch_pending() == 1
    assert stage.dispatch_pending() == 0

    row = nudge_row(sessions, "n1")
    assert (row.status, row.attempts, row.provider) == ("sent", 1, "sendgrid")
    assert row.provider_message_id is not None and row.provider_message_id.startswith("sg-")
    assert row.sent_at == T0 + timedelta(seconds=7)
    assert sent_to_stub(stub) == ["n1", "n1"]
    assert decisions(sessions, "n1") == [("retrying", "retrying"), ("sent", None)]


def test_a_429_pauses_every_later_send_on_the_channel(
    sessions: sessionmaker[Session], templates: TemplateBook, stub: StubProviders
) -> None:
    seed(sessions, 2, [("n1", 1, "email"), ("n2", 2, "email")])
    mono = FakeMonotonic()
    stage = make_dispatcher(
        sessions, templates, {"email": sendgrid(stub.url)}, limits={"email": mono.limit()}
    )
    stub.script(429, headers={"Retry-After": "7"})

    assert stage.dispatch_pending() == 2

    assert mono.sleeps == pytest.approx([7.0])  # the second send waited out the first's 429
    assert nudge_row(sessions, "n1").status == "pending"
    assert nudge_row(sessions, "n2").status == "sent"
    assert sent_to_stub(stub) == ["n1", "n2"]


def test_retry_after_as_an_http_date(
    sessions: sessionmaker[Session], templates: TemplateBook, stub: StubProviders
) -> None:
    seed(sessions, 1, [("n1", 1, "email")])
    mono = FakeMonotonic()
    limit = mono.limit()
    policy = SendingPolicy(backoff_s=1.0)
    stage = make_dispatcher(
        sessions, templates, {"email": sendgrid(stub.url)}, None, policy, {"email": limit}
    )
    # An HTTP date is read against the real time; the dispatcher adds the wait to its clock.
    stub.script(429, headers={"Retry-After": formatdate(time.time() + 30, usegmt=True)})

    assert stage.dispatch("n1") == "pending"

    wait = (not_before(sessions, "n1") - T0).total_seconds()
    assert 28.0 <= wait <= 30.0  # the date has whole seconds
    assert limit.acquire() == pytest.approx(wait, abs=0.01)


@pytest.mark.parametrize(
    ("status", "code"),
    [(429, 20429), (400, 20429)],
    ids=["http-429", "error-20429-on-400"],
)
def test_twilio_rate_limit_is_retried_after_the_backoff(
    sessions: sessionmaker[Session],
    templates: TemplateBook,
    stub: StubProviders,
    status: int,
    code: int,
) -> None:
    seed(sessions, 1, [("n1", 1, "sms")])
    clock = Clock()
    policy = SendingPolicy(backoff_s=1.0)  # shorter than Retry-After: the provider's wait wins
    stage = make_dispatcher(sessions, templates, {"sms": twilio(stub.url)}, clock, policy)
    # Twilio's exceptions carry no headers; the sender keeps the last response's.
    stub.script(
        status, headers={"Retry-After": "7"}, body=twilio_error(code, status, "Too Many Requests")
    )

    assert stage.dispatch("n1") == "pending"

    row = nudge_row(sessions, "n1")
    assert (row.status, row.attempts, row.reason_code) == ("pending", 1, "retrying")
    assert row.reason is not None and f"HTTP {status}, error 20429" in row.reason
    assert row.not_before == T0 + timedelta(seconds=7)
    assert stage.dispatch_pending() == 0
    assert len(stub.requests) == 1

    clock.now = T0 + timedelta(seconds=7)
    assert stage.dispatch_pending() == 1

    row = nudge_row(sessions, "n1")
    assert (row.status, row.provider) == ("sent", "twilio")
    assert row.provider_message_id is not None and row.provider_message_id.startswith("SM")
    assert sent_to_stub(stub) == [phone(1), phone(1)]
    assert decisions(sessions, "n1") == [("retrying", "retrying"), ("sent", None)]


@pytest.mark.parametrize(
    ("channel", "status", "headers", "body", "error_code"),
    [
        ("email", 429, {"Retry-After": "7"}, b"", "429"),
        ("sms", 429, {}, twilio_error(20429, 429, "Too Many Requests"), "20429"),
        ("sms", 503, {}, b"", "503"),
    ],
    ids=["sendgrid-429", "twilio-20429", "twilio-503"],
)
def test_after_max_attempts_a_retryable_failure_gives_up(
    sessions: sessionmaker[Session],
    templates: TemplateBook,
    stub: StubProviders,
    channel: Channel,
    status: int,
    headers: dict[str, str],
    body: Any,
    error_code: str,
) -> None:
    seed(sessions, 1, [("n1", 1, channel)])
    clock = Clock()
    policy = SendingPolicy(max_attempts=3, backoff_s=1.0)
    stage = make_dispatcher(
        sessions, templates, {channel: sender_for(channel, stub.url)}, clock, policy
    )
    stub.script(status, headers=headers, body=body, times=3)

    outcomes = []
    for _ in range(policy.max_attempts):
        outcomes.append(stage.dispatch("n1"))
        row = nudge_row(sessions, "n1")
        clock.now = row.not_before or clock.now

    assert outcomes == ["pending", "pending", "failed"]
    row = nudge_row(sessions, "n1")
    assert (row.status, row.reason_code, row.attempts) == ("failed", "gave_up", 3)
    assert row.reason is not None and f"HTTP {status}" in row.reason
    clock.now += timedelta(days=1)
    assert stage.dispatch_pending() == 0
    assert len(stub.requests) == 3  # max_attempts calls, then none
    *retries, final = [e for e in ledger(sessions, "message.status") if e["nudge_id"] == "n1"]
    assert [(e["status"], e["error_code"]) for e in retries] == [("retrying", error_code)] * 2
    assert (final["status"], final["reason_code"], final["error_code"]) == (
        "failed",
        "gave_up",
        error_code,
    )
    assert final["provider"] == ("sendgrid" if channel == "email" else "twilio")


NOT_FOUND_AT_PROVIDER = {
    "messages": [],
    "meta": {"key": "messages", "next_page_url": None, "page": 0, "page_size": 50},
}
"""A lookup's answer that both SDKs read as "no such message" (SendGrid's Email Activity
search and Twilio's message list)."""


def test_a_long_retry_after_never_leads_another_sender_to_send_the_batch_twice(
    sessions: sessionmaker[Session], templates: TemplateBook, stub: StubProviders
) -> None:
    seed(sessions, 2, [("e1", 1, "email"), ("e2", 2, "email"), ("s1", 1, "sms")])
    clock = Clock()
    senders: dict[str, Sender] = {"email": sendgrid(stub.url), "sms": twilio(stub.url)}
    other = make_dispatcher(sessions, templates, senders, clock)  # a second sender process
    mono = FakeMonotonic()

    def wait_while_the_other_runs(seconds: float) -> None:
        mono.sleep(seconds)
        clock.now += timedelta(seconds=seconds)
        other.reconcile()  # what the other process does meanwhile
        other.dispatch_pending()

    email_limit = RateLimit(1000.0, clock=mono.clock, sleep=wait_while_the_other_runs)
    first = make_dispatcher(
        sessions, templates, senders, clock, limits={"email": email_limit, "sms": mono.limit()}
    )
    stub.script(503, headers={"Retry-After": "1800"})  # e1: SendGrid down for maintenance
    stub.script(200, body=NOT_FOUND_AT_PROVIDER, times=2)  # the other's lookups of e2, s1

    first.dispatch_pending()  # e1 refused; e2 waits out the pause, s1 behind it

    assert mono.sleeps == pytest.approx([1800.0])
    # e1 twice (refused, then retried once due); e2 and s1 once each.
    assert Counter(sent_to_stub(stub)) == {"e1": 2, "e2": 1, phone(1): 1}


# --- 5xx: exponential backoff -----------------------------------------------------------------


@pytest.mark.parametrize("channel", ["email", "sms"])
@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_back_off_exponentially(
    sessions: sessionmaker[Session],
    templates: TemplateBook,
    stub: StubProviders,
    channel: Channel,
    status: int,
) -> None:
    seed(sessions, 1, [("n1", 1, channel)])
    clock = Clock()
    policy = SendingPolicy(max_attempts=5, backoff_s=2.0)
    stage = make_dispatcher(
        sessions, templates, {channel: sender_for(channel, stub.url)}, clock, policy
    )
    stub.script(status, times=3)

    delays = []
    for attempt in (1, 2, 3):
        assert stage.dispatch("n1") == "pending"
        row = nudge_row(sessions, "n1")
        assert (row.attempts, row.reason_code) == (attempt, "retrying")
        assert row.reason is not None and f"HTTP {status}" in row.reason
        assert row.not_before is not None
        delays.append((row.not_before - clock.now).total_seconds())
        clock.now = row.not_before - timedelta(milliseconds=1)
        assert stage.dispatch_pending() == 0  # a moment early: still waiting
        clock.now = row.not_before

    assert delays == [policy.retry_delay(n, None) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert stage.dispatch("n1") == "sent"
    assert len(stub.requests) == 4
    assert nudge_row(sessions, "n1").attempts == 3  # failed attempts; the fourth went
    assert decisions(sessions, "n1") == [("retrying", "retrying")] * 3 + [("sent", None)]


# --- refusals: failed at once -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "status", "body", "error_code"),
    [
        ("email", 400, {"errors": [{"message": "bad", "field": "from"}]}, "400"),
        ("email", 401, {"errors": [{"message": "bad key", "field": None}]}, "401"),
        ("email", 403, b"", "403"),
        ("email", 413, b"", "413"),
        ("sms", 400, twilio_error(21211, 400, "The 'To' number is not valid."), "21211"),
        ("sms", 401, twilio_error(20003, 401, "Authenticate"), "20003"),
        ("sms", 403, twilio_error(20003, 403, "Permission denied"), "20003"),
        ("sms", 413, b"", "413"),
    ],
    ids=[f"{p}-{s}" for p in ("sendgrid", "twilio") for s in (400, 401, 403, 413)],
)
def test_a_refusal_fails_at_once_and_is_never_retried(
    sessions: sessionmaker[Session],
    templates: TemplateBook,
    stub: StubProviders,
    channel: Channel,
    status: int,
    body: Any,
    error_code: str,
) -> None:
    seed(sessions, 1, [("n1", 1, channel)])
    clock = Clock()
    stage = make_dispatcher(sessions, templates, {channel: sender_for(channel, stub.url)}, clock)
    stub.script(status, body=body)

    assert stage.dispatch("n1") == "failed"

    row = nudge_row(sessions, "n1")
    assert (row.status, row.reason_code, row.attempts, row.not_before) == (
        "failed",
        "provider_refused",
        1,
        None,
    )
    assert row.reason is not None and f"HTTP {status}" in row.reason
    clock.now += timedelta(days=1)
    assert stage.dispatch_pending() == 0
    assert stage.dispatch("n1") is None
    assert len(stub.requests) == 1
    [final] = [e for e in ledger(sessions, "message.status") if e["nudge_id"] == "n1"]
    assert (final["status"], final["reason_code"], final["error_code"]) == (
        "failed",
        "provider_refused",
        error_code,
    )


# --- no answer: ambiguous, never resent by dispatch -------------------------------------------


@pytest.mark.parametrize("channel", ["email", "sms"])
@pytest.mark.parametrize("how", ["read_timeout", "dropped"])
def test_no_answer_after_sending_is_ambiguous_and_not_resent(
    sessions: sessionmaker[Session],
    templates: TemplateBook,
    stub: StubProviders,
    channel: Channel,
    how: str,
) -> None:
    seed(sessions, 1, [("n1", 1, channel)])
    clock = Clock()
    sender = sender_for(channel, stub.url, SHORT_TIMEOUT_S)
    stage = make_dispatcher(sessions, templates, {channel: sender}, clock)
    if how == "read_timeout":
        stub.script(delay_s=SHORT_TIMEOUT_S * 4)  # answered, but after the sender gave up
    else:
        stub.script(drop=True)

    assert stage.dispatch("n1") == "ambiguous"

    row = nudge_row(sessions, "n1")
    assert (row.status, row.reason_code, row.provider_message_id) == (
        "ambiguous",
        "no_answer",
        None,
    )
    assert row.reason is not None and "may have been accepted" in row.reason
    for later in (timedelta(0), timedelta(hours=1)):
        clock.now = T0 + later
        assert stage.dispatch_pending() == 0
        assert stage.dispatch("n1") is None
    assert len(stub.requests) == 1
    assert decisions(sessions, "n1") == [("ambiguous", "no_answer")]


# --- nothing sent: a refused connection is retried ---------------------------------------------


@pytest.mark.parametrize("channel", ["email", "sms"])
def test_a_refused_connection_is_retried_not_ambiguous(
    sessions: sessionmaker[Session],
    templates: TemplateBook,
    stub: StubProviders,
    channel: Channel,
) -> None:
    seed(sessions, 1, [("n1", 1, channel)])
    clock = Clock()
    down = make_dispatcher(
        sessions, templates, {channel: sender_for(channel, closed_port_url())}, clock
    )

    assert down.dispatch("n1") == "pending"

    row = nudge_row(sessions, "n1")
    assert (row.status, row.reason_code, row.attempts) == ("pending", "retrying", 1)
    assert row.reason is not None and "unreachable" in row.reason
    assert row.not_before == T0 + timedelta(seconds=SendingPolicy().backoff_s)
    assert decisions(sessions, "n1") == [("retrying", "retrying")]  # nothing went: not ambiguous

    # Once the provider is back (the same nudge, a sender that reaches it), it goes once.
    up = make_dispatcher(sessions, templates, {channel: sender_for(channel, stub.url)}, clock)
    assert up.dispatch_pending() == 0
    clock.now = row.not_before
    assert up.dispatch_pending() == 1
    assert nudge_row(sessions, "n1").status == "sent"
    assert len(stub.requests) == 1
    assert decisions(sessions, "n1") == [("retrying", "retrying"), ("sent", None)]


# --- Twilio 21610: the number replied STOP -----------------------------------------------------


def test_twilio_21610_suppresses_the_number_and_withdraws_sms_consent(
    sessions: sessionmaker[Session], templates: TemplateBook, stub: StubProviders
) -> None:
    seed(sessions, 1, [("n1", 1, "sms"), ("n2", 1, "sms"), ("e1", 1, "email")])
    clock = Clock()
    stage = make_dispatcher(
        sessions, templates, {"sms": twilio(stub.url), "email": sendgrid(stub.url)}, clock
    )
    stub.script(400, body=twilio_error(21610, 400, "Attempt to send to unsubscribed recipient"))

    assert stage.dispatch("n1") == "failed"

    row = nudge_row(sessions, "n1")
    assert (row.status, row.reason_code) == ("failed", "opted_out")
    assert row.reason is not None and "replied STOP" in row.reason
    with sessions() as session:
        assert suppressed(session, LINK_KEY, [("sms", phone(1))]) == {("sms", phone(1))}
        assert not has_consent(session, supporter_id(1), "sms")
        assert has_consent(session, supporter_id(1), "email")  # only the SMS consent goes
        withdrawal = session.scalars(
            select(ConsentRecord).where(ConsentRecord.granted.is_(False))
        ).one()
        stored = session.scalars(select(Suppression)).one()
    assert (withdrawal.supporter_id, withdrawal.channel, withdrawal.source) == (
        supporter_id(1),
        "sms",
        "twilio_21610",
    )
    assert withdrawal.recorded_at == T0
    assert phone(1) not in stored.contact  # the list holds a keyed hash, not the number
    [changed] = ledger(sessions, "consent.changed")
    assert (changed["supporter_id"], changed["channel"], changed["granted"]) == (
        supporter_id(1),
        "sms",
        False,
    )
    assert changed["source"] == "twilio_21610"
    assert str(withdrawal.event_id) == changed["event_id"]
    [final] = [e for e in ledger(sessions, "message.status") if e["nudge_id"] == "n1"]
    assert (final["status"], final["reason_code"], final["error_code"]) == (
        "failed",
        "opted_out",
        "21610",
    )

    # The next SMS to them is stopped before the provider; email still goes.
    assert stage.dispatch("n2") == "skipped"
    assert nudge_row(sessions, "n2").reason_code in {"no_consent", "suppressed"}
    assert decisions(sessions, "n2") == [("skipped", nudge_row(sessions, "n2").reason_code)]
    assert stage.dispatch("e1") == "sent"
    assert sent_to_stub(stub) == [phone(1), "e1"]


def test_a_suppressed_number_stays_blocked_after_a_new_consent(
    sessions: sessionmaker[Session], templates: TemplateBook, stub: StubProviders
) -> None:
    """Only the person lifts a STOP (texting START): a later form grant does not."""
    seed(sessions, 1, [("n1", 1, "sms"), ("n2", 1, "sms")])
    clock = Clock()
    stage = make_dispatcher(sessions, templates, {"sms": twilio(stub.url)}, clock)
    stub.script(400, body=twilio_error(21610, 400, "Attempt to send to unsubscribed recipient"))
    assert stage.dispatch("n1") == "failed"
    with sessions.begin() as session:
        session.add(
            ConsentRecord(
                supporter_id=supporter_id(1),
                channel="sms",
                granted=True,
                source="form",
                recorded_at=T0 + timedelta(hours=1),
            )
        )
    clock.now = T0 + timedelta(hours=2)

    assert stage.dispatch("n2") == "skipped"

    assert nudge_row(sessions, "n2").reason_code == "suppressed"
    assert decisions(sessions, "n2") == [("skipped", "suppressed")]
    assert len(stub.requests) == 1


# --- racing senders ---------------------------------------------------------------------------


@contextlib.contextmanager
def separate_engines(url: str, count: int = 2) -> Iterator[list[Engine]]:
    """Engines of their own on the test's database, as two sender processes would have."""
    engines = [make_engine(url) for _ in range(count)]
    try:
        yield engines
    finally:
        for engine in engines:
            engine.dispose()


def race(*calls: Callable[[], T]) -> list[T]:
    """Run the calls in threads released together by a barrier; their results, in order."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T:
        barrier.wait(timeout=30)
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(run, call) for call in calls]
        return [future.result(timeout=300) for future in futures]


def due_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        due = select(func.count()).select_from(Nudge).where(Nudge.status.in_(("pending", "held")))
        return session.scalar(due) or 0


def drain(stage: Dispatcher) -> int:
    """Dispatch in small batches until nothing is due; how many nudges this sender claimed."""
    claimed = 0
    while True:
        got = stage.dispatch_pending(limit=20)
        claimed += got
        if not got and not due_count(stage.sessions):
            return claimed


RACERS = 100
"""Supporters in the race tests; each has an email and an SMS nudge."""


def race_nudges() -> list[tuple[str, int, Channel]]:
    nudges: list[tuple[str, int, Channel]] = []
    for n in range(1, RACERS + 1):
        nudges += [(f"race:{n}:email", n, "email"), (f"race:{n}:sms", n, "sms")]
    return nudges


def test_two_senders_racing_send_every_nudge_exactly_once(
    database_url: str, sessions: sessionmaker[Session], templates: TemplateBook, stub: StubProviders
) -> None:
    nudges = race_nudges()
    seed(sessions, RACERS, nudges)
    with separate_engines(database_url) as engines:
        stages = [
            make_dispatcher(
                session_factory(engine),
                templates,
                {"email": sendgrid(stub.url), "sms": twilio(stub.url)},
            )
            for engine in engines
        ]
        claimed = race(*(functools.partial(drain, stage) for stage in stages))

    assert sum(claimed) == len(nudges)  # each nudge claimed by one sender, once
    expected = [i for i, _, c in nudges if c == "email"] + [phone(n) for n in range(1, RACERS + 1)]
    assert Counter(sent_to_stub(stub)) == Counter(expected)  # each reached the provider once
    with sessions() as session:
        statuses = Counter(session.scalars(select(Nudge.status)))
    assert statuses == {"sent": len(nudges)}
    sent_events = Counter(e["nudge_id"] for e in ledger(sessions, "message.status"))
    assert sent_events == Counter(i for i, _, _ in nudges)


def test_two_outbox_senders_racing_write_every_message_exactly_once(
    database_url: str, sessions: sessionmaker[Session], templates: TemplateBook
) -> None:
    nudges = race_nudges()
    seed(sessions, RACERS, nudges)
    with separate_engines(database_url) as engines:
        stages = [make_dispatcher(session_factory(e), templates, {}) for e in engines]
        claimed = race(*(functools.partial(drain, stage) for stage in stages))

    assert sum(claimed) == len(nudges)
    with sessions() as session:
        written = Counter(session.scalars(select(OutboxMessage.nudge_id)))
        statuses = Counter(session.scalars(select(Nudge.status)))
    assert written == Counter(i for i, _, _ in nudges)
    assert statuses == {"sent": len(nudges)}
    assert Counter(e["nudge_id"] for e in ledger(sessions, "message.status")) == written


ONE_A_DAY = SendingPolicy(
    channels={"email": ChannelPolicy(quiet=None, stale_after=timedelta(days=2), per_day=1)}
)


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_senders_racing_for_one_supporter_respect_a_daily_cap(
    database_url: str, sessions: sessionmaker[Session], templates: TemplateBook, stub: StubProviders
) -> None:
    """Each sender takes one of two nudges per supporter, in step: the supporter row lock
    makes the second wait for the first's claim, which it then counts."""
    people = 20
    seed(
        sessions,
        people,
        [(f"a:{n}", n, "email") for n in range(1, people + 1)]
        + [(f"b:{n}", n, "email") for n in range(1, people + 1)],
    )
    with separate_engines(database_url) as engines:
        first, second = (
            make_dispatcher(session_factory(e), templates, {"email": sendgrid(stub.url)})
            for e in engines
        )
        first.policy = second.policy = ONE_A_DAY

        def take(stage: Dispatcher, prefix: str) -> list[str | None]:
            return [stage.dispatch(f"{prefix}:{n}") for n in range(1, people + 1)]

        race(lambda: take(first, "a"), lambda: take(second, "b"))

    for n in range(1, people + 1):
        rows = [nudge_row(sessions, f"{p}:{n}") for p in "ab"]
        assert sorted((r.status, r.reason_code) for r in rows) == [
            ("sent", None),
            ("skipped", "cap_day"),
        ], f"supporter {n}"
    assert len(stub.requests) == people
    assert Counter(e["status"] for e in ledger(sessions, "message.status")) == {
        "sent": people,
        "skipped": people,
    }


_SET_CLAUSE = re.compile(r"\s*UPDATE nudges SET (.*?) WHERE ", re.DOTALL)
_RECENT_SENDS = re.compile(r"\s*SELECT .*nudges\.sent_at, nudges\.sending_since", re.DOTALL)


def is_claim(statement: str) -> bool:
    """claim_nudges' UPDATE: the one that sets both the status and ``sending_since``
    (renew_claim sets only the latter)."""
    found = _SET_CLAUSE.match(statement)
    return found is not None and {"status=", "sending_since="} <= set(
        re.findall(r"\b(status=|sending_since=)", found.group(1))
    )


class InterleavingFailed(RuntimeError):
    """The hooks never saw the statements they wait for: the test proved nothing."""


def pause_claims_until_the_other_read(engines: list[Engine], wait_s: float) -> list[bool]:
    """Make each sender, before it claims, wait (up to ``wait_s``) until the other has read the
    recent sends: the interleaving two real processes can hit by chance. Returns, as they
    happen, whether each claim's wait saw the other's read (False: it ran out)."""
    read = [threading.Event() for _ in engines]
    waits: list[bool] = []
    for mine, engine in enumerate(engines):

        def before(conn: Any, cursor: Any, statement: str, *_: Any, other: int = 1 - mine) -> None:
            if is_claim(statement):
                waits.append(read[other].wait(wait_s))

        def after(conn: Any, cursor: Any, statement: str, *_: Any, me: int = mine) -> None:
            if _RECENT_SENDS.match(statement):
                read[me].set()

        event.listen(engine, "before_cursor_execute", before)
        event.listen(engine, "after_cursor_execute", after)
    return waits


def test_a_daily_cap_holds_when_both_senders_read_before_either_claims(
    database_url: str,
    sessions: sessionmaker[Session],
    templates: TemplateBook,
    stub: StubProviders,
    request: pytest.FixtureRequest,
) -> None:
    seed(sessions, 1, [("a", 1, "email"), ("b", 1, "email")])
    with separate_engines(database_url) as engines:
        waits = pause_claims_until_the_other_read(engines, wait_s=1.0)
        first, second = (
            make_dispatcher(session_factory(e), templates, {"email": sendgrid(stub.url)})
            for e in engines
        )
        first.policy = second.policy = ONE_A_DAY

        outcomes = race(lambda: first.dispatch("a"), lambda: second.dispatch("b"))

    if len(waits) != 2:
        raise InterleavingFailed(f"saw {len(waits)} claims, expected 2: has the SQL changed?")
    # The second sender was held on the lock (PostgreSQL: the supporter's row; SQLite: the
    # write lock) before it could read, so the first one's wait ran out; then the second read
    # the first one's claim.
    assert waits == [False, True]
    assert sorted(str(o) for o in outcomes) == ["sent", "skipped"]
    assert len(stub.requests) == 1
