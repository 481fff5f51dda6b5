"""The dispatcher on both databases: outbox mode, consent and address checks, a fake Sender."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from consumers.dispatch import Dispatcher
from consumers.messages import OutgoingMessage, Sender, SendError, SendResult
from consumers.rendering import TemplateBook
from consumers.repository import list_outbox, store_nudges
from infra.db import ConsentRecord, Nudge, OutboxMessage
from tests.factories import add_supporter, consent_record, nudge_request

SID = "sup_" + "1" * 32
EMAIL = "jo.bloggs@example.org"
PHONE = "+447911123456"
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
WELCOME = f"welcome:{SID}"
INVITE = f"invite-signer:{SID}"
DAY = timedelta(days=1)


@dataclass
class RecordingSender:
    """In-memory Sender: records each message; raises ``error`` instead when one is set."""

    provider: str = "fake"
    error: SendError | None = None
    sent: list[OutgoingMessage] = field(default_factory=list)

    def send(self, message: OutgoingMessage) -> SendResult:
        self.sent.append(message)
        if self.error is not None:
            raise self.error
        return SendResult(self.provider, f"{self.provider}-{len(self.sent)}")


@pytest.fixture(scope="module")
def templates() -> TemplateBook:
    return TemplateBook()


def dispatcher(
    sessions: sessionmaker[Session], templates: TemplateBook, **senders: Sender
) -> Dispatcher:
    return Dispatcher(sessions, templates, dict(senders), "Grassroots Together", "http://x.test")


def seed(
    sessions: sessionmaker[Session],
    *,
    email: str | None = EMAIL,
    phone: str | None = PHONE,
    person: bool = True,
    consent: tuple[str, ...] = ("email", "sms"),
) -> None:
    with sessions.begin() as session:
        if person:
            add_supporter(
                session, SID, email=email, phone=phone, consent=consent, consented_at=T0 - DAY
            )
        else:
            session.add_all(consent_record(SID, channel, T0 - DAY) for channel in consent)
        store_nudges(
            session,
            [
                nudge_request(WELCOME, SID, "email", T0, context={"area": "Hackney"}),
                nudge_request(
                    INVITE,
                    SID,
                    "sms",
                    T0,
                    template="invite_next_meeting",
                    rule="invite-signer",
                    context={"petition_title": "Clean air"},
                ),
            ],
        )


def store_held_out(
    sessions: sessionmaker[Session], channel: Literal["email", "sms"] = "email"
) -> str:
    """A nudge of a rule's hold-out group, for the seeded supporter; returns its id."""
    nudge_id = f"sorry-we-missed-you:{SID}:{channel}"
    with sessions.begin() as session:
        store_nudges(
            session,
            [
                nudge_request(
                    nudge_id,
                    SID,
                    channel,
                    T0,
                    template="sorry_we_missed_you",
                    rule="sorry-we-missed-you",
                    holdout=True,
                )
            ],
        )
    return nudge_id


def nudge_row(sessions: sessionmaker[Session], nudge_id: str) -> Nudge:
    with sessions() as session:
        row = session.get(Nudge, nudge_id)
        assert row is not None
        return row


def outbox(sessions: sessionmaker[Session]) -> list[OutboxMessage]:
    with sessions() as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


# --- outbox mode (no provider) ----------------------------------------------------------------


def test_outbox_mode_sends_each_nudge_exactly_once(
    sessions: sessionmaker[Session], templates: TemplateBook
) -> None:
    seed(sessions)
    stage = dispatcher(sessions, templates)

    with capture_logs() as logs:
        assert stage.dispatch(WELCOME) == "sent"
        assert stage.dispatch(WELCOME) is None
        assert stage.dispatch_pending() == 1  # the SMS
        assert stage.dispatch_pending() == 0
        assert stage.dispatch(INVITE) is None

    rows = outbox(sessions)
    assert [(r.nudge_id, r.channel, r.to_address) for r in rows] == [
        (WELCOME, "email", EMAIL),
        (INVITE, "sms", PHONE),
    ]
    email, sms = rows
    assert email.subject and "Grassroots Together" in email.body
    assert "Jo" in email.body
    assert f"http://x.test/unsubscribe/{WELCOME}" in email.body
    assert sms.subject is None and "Reply STOP to opt out" in sms.body
    assert nudge_row(sessions, WELCOME).status == nudge_row(sessions, INVITE).status == "sent"
    with sessions() as session:
        assert [m["nudge_id"] for m in list_outbox(session, 10)] == [WELCOME, INVITE]
    dispatched = [e for e in logs if e["event"] == "nudge.dispatched"]
    assert [(e["nudge_id"], e["status"]) for e in dispatched] == [
        (WELCOME, "sent"),
        (INVITE, "sent"),
    ]
    assert not any(EMAIL in str(e) or PHONE in str(e) for e in logs), "personal data in logs"


@pytest.mark.parametrize(
    ("consent", "nudge_id", "reason"),
    [
        ((), WELCOME, "no email consent"),
        (("sms",), WELCOME, "no email consent"),
        (("email",), INVITE, "no sms consent"),
    ],
    ids=["none", "sms-only", "email-only"],
)
def test_without_consent_a_nudge_is_skipped(
    sessions: sessionmaker[Session],
    templates: TemplateBook,
    consent: tuple[str, ...],
    nudge_id: str,
    reason: str,
) -> None:
    seed(sessions, consent=consent)
    sender = RecordingSender()

    for stage in (dispatcher(sessions, templates), dispatcher(sessions, templates, sms=sender)):
        stage.dispatch(nudge_id)

    row = nudge_row(sessions, nudge_id)
    assert (row.status, row.reason) == ("skipped", reason)
    assert outbox(sessions) == []
    assert sender.sent == []


def test_consent_withdrawn_after_the_request_is_honoured_at_sending(
    sessions: sessionmaker[Session], templates: TemplateBook
) -> None:
    seed(sessions)
    with sessions.begin() as session:
        session.add(
            ConsentRecord(
                supporter_id=SID,
                channel="email",
                granted=False,
                source="unsubscribe",
                recorded_at=T0 + timedelta(minutes=1),
            )
        )

    assert dispatcher(sessions, templates).dispatch(WELCOME) == "skipped"
    assert nudge_row(sessions, WELCOME).reason == "no email consent"
    assert outbox(sessions) == []


@pytest.mark.parametrize(
    ("kwargs", "nudge_id", "reason"),
    [
        ({"email": None}, WELCOME, "no email address"),
        ({"phone": None}, INVITE, "no sms address"),
        ({"person": False}, WELCOME, "no email address"),
        ({"person": False}, INVITE, "no sms address"),
    ],
    ids=["no-email", "no-phone", "no-person-email", "no-person-sms"],
)
def test_without_an_address_a_nudge_is_skipped(
    sessions: sessionmaker[Session],
    templates: TemplateBook,
    kwargs: dict[str, object],
    nudge_id: str,
    reason: str,
) -> None:
    seed(sessions, **kwargs)  # type: ignore[arg-type]

    assert dispatcher(sessions, templates).dispatch(nudge_id) == "skipped"

    row = nudge_row(sessions, nudge_id)
    assert (row.status, row.reason) == ("skipped", reason)
    assert outbox(sessions) == []


def test_a_held_out_nudge_is_never_sent_in_outbox_mode(
    sessions: sessionmaker[Session], templates: TemplateBook
) -> None:
    seed(sessions)  # address and consent on both channels: only the hold-out stops it
    held = [store_held_out(sessions, "email"), store_held_out(sessions, "sms")]
    stage = dispatcher(sessions, templates)

    with capture_logs() as logs:
        assert stage.dispatch(held[0]) is None
        assert stage.dispatch_pending() == 2  # the two seeded nudges, not the held-out ones
        assert stage.dispatch_pending() == 0
        assert stage.dispatch(held[1]) is None

    assert [r.nudge_id for r in outbox(sessions)] == [WELCOME, INVITE]
    for nudge_id in held:
        row = nudge_row(sessions, nudge_id)
        assert row.status == "held_out"
        assert row.reason is not None and "sorry-we-missed-you" in row.reason
    assert not any(e.get("nudge_id") in held for e in logs)


# --- with a provider --------------------------------------------------------------------------


def test_a_sender_is_called_once_per_nudge(
    sessions: sessionmaker[Session], templates: TemplateBook
) -> None:
    seed(sessions)
    email, sms = RecordingSender("mail"), RecordingSender("text")
    stage = dispatcher(sessions, templates, email=email, sms=sms)

    assert stage.dispatch_pending() == 2
    assert stage.dispatch_pending() == 0
    assert stage.dispatch(WELCOME) is None

    assert [(m.nudge_id, m.to, m.channel) for m in email.sent] == [(WELCOME, EMAIL, "email")]
    assert [(m.nudge_id, m.to, m.channel) for m in sms.sent] == [(INVITE, PHONE, "sms")]
    assert email.sent[0].subject
    welcome, invite = nudge_row(sessions, WELCOME), nudge_row(sessions, INVITE)
    assert (welcome.status, welcome.provider_message_id) == ("sent", "mail-1")
    assert (invite.status, invite.provider_message_id) == ("sent", "text-1")
    assert outbox(sessions) == []  # a provider sends; the outbox is for the embedded mode


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (SendError("read timed out", retryable=True, ambiguous=True), "ambiguous"),
        (SendError("refused: 400", retryable=False, status=400), "failed"),
        (SendError("unauthorised", retryable=False, status=401), "failed"),
    ],
    ids=["ambiguous", "refused", "unauthorised"],
)
def test_a_send_error_is_recorded_and_not_retried(
    sessions: sessionmaker[Session], templates: TemplateBook, error: SendError, status: str
) -> None:
    seed(sessions, consent=("email",))
    sender = RecordingSender(error=error)
    stage = dispatcher(sessions, templates, email=sender)

    assert stage.dispatch(WELCOME) == status
    assert stage.dispatch(WELCOME) is None
    stage.dispatch_pending()

    assert len(sender.sent) == 1
    row = nudge_row(sessions, WELCOME)
    assert (row.status, row.reason, row.provider_message_id) == (status, str(error), None)
    assert outbox(sessions) == []


def test_a_held_out_nudge_never_reaches_a_sender(
    sessions: sessionmaker[Session], templates: TemplateBook
) -> None:
    seed(sessions)
    held = store_held_out(sessions)
    email, sms = RecordingSender("mail"), RecordingSender("text")
    stage = dispatcher(sessions, templates, email=email, sms=sms)

    assert stage.dispatch(held) is None
    assert stage.dispatch_pending() == 2

    assert [m.nudge_id for m in email.sent + sms.sent] == [WELCOME, INVITE]
    row = nudge_row(sessions, held)
    assert (row.status, row.provider_message_id) == ("held_out", None)
    assert outbox(sessions) == []


def test_the_nudge_is_committed_as_sending_before_the_provider_is_called(
    sessions: sessionmaker[Session], templates: TemplateBook
) -> None:
    seed(sessions, consent=("email",))
    seen: list[str] = []

    class PeekingSender:
        provider = "peek"

        def send(self, message: OutgoingMessage) -> SendResult:
            seen.append(nudge_row(sessions, message.nudge_id).status)
            return SendResult("peek", None)

    assert dispatcher(sessions, templates, email=PeekingSender()).dispatch(WELCOME) == "sent"
    assert seen == ["sending"]
