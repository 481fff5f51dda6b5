"""The unsubscribe link every email carries works, and the dispatcher honours it at once."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy.orm import Session, sessionmaker

from consumers.dispatch import Dispatcher
from consumers.rendering import TemplateBook
from consumers.repository import list_outbox, store_nudges
from schemas.events import NudgeRequested
from tests.integration.test_dispatch import INVITE, SID, T0, WELCOME, nudge_row, seed

THANKS = f"first-meeting-thanks:{SID}"


def email_request(
    nudge_id: str, template: str, at: datetime = T0, cause: uuid.UUID | None = None
) -> NudgeRequested:
    return NudgeRequested(
        event_time=at,
        nudge_id=nudge_id,
        supporter_id=SID,
        channel="email",
        template=template,
        rule=nudge_id.split(":")[0],
        cause_event_id=cause or uuid.uuid4(),
    )


def add_thanks(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        store_nudges(session, [email_request(THANKS, "thanks_first_meeting")])


def signed_dispatcher(sessions: sessionmaker[Session], api: str) -> Dispatcher:
    # The api fixture's app signs with the settings fixture's identity key, "test-key".
    return Dispatcher(sessions, TemplateBook(), {}, "Grassroots Together", api, "test-key")


def link_in_the_email(sessions: sessionmaker[Session]) -> str:
    with sessions() as session:
        (row,) = [r for r in list_outbox(session, 10) if r["channel"] == "email"]
    match = re.search(r"(http://\S+/unsubscribe/\S+)", row["body"])
    assert match, row["body"]
    return match.group(1)


def test_one_click_unsubscribe_stops_the_next_email_but_not_texts(
    api: str, sessions: sessionmaker[Session]
) -> None:
    seed(sessions)
    stage = signed_dispatcher(sessions, api)
    assert stage.dispatch(WELCOME) == "sent"
    link = link_in_the_email(sessions)

    page = httpx.get(link)
    assert page.status_code == 200
    assert '<form method="post">' in page.text
    assert "Grassroots Together" in page.text

    # What a mail client sends for List-Unsubscribe-Post (RFC 8058).
    done = httpx.post(
        link,
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert done.status_code == 200
    assert "unsubscribed" in done.text

    add_thanks(sessions)
    assert stage.dispatch(THANKS) == "skipped"
    assert nudge_row(sessions, THANKS).reason == "no email consent"
    assert stage.dispatch(INVITE) == "sent"  # consent is per channel


def test_a_forged_or_unknown_link_is_a_404_and_changes_nothing(
    api: str, sessions: sessionmaker[Session]
) -> None:
    seed(sessions)
    stage = signed_dispatcher(sessions, api)
    genuine = stage.opt_out_url(INVITE)
    forged = [
        f"{api}/unsubscribe/{WELCOME}",  # no token: the supporter id alone is not enough
        f"{api}/unsubscribe/{WELCOME}?t=" + "0" * 32,
        genuine.replace(INVITE, WELCOME),  # another nudge's token
        stage.opt_out_url("welcome:nobody"),  # signed, but no such nudge
    ]
    for url in forged:
        assert httpx.get(url).status_code == 404, url
        assert httpx.post(url).status_code == 404, url
    assert stage.dispatch(WELCOME) == "sent"
    assert httpx.get(genuine).status_code == 200


def test_an_opt_out_outranks_a_signup_stamped_ahead_of_the_clock(
    sessions: sessionmaker[Session],
) -> None:
    from consumers.repository import has_consent
    from producers.ledger import record_events
    from producers.unsubscribe import withdraw
    from schemas.events import SupporterSignup

    now = datetime.now(UTC)
    signup = SupporterSignup(
        supporter_id=SID,
        email="jo@example.org",
        event_time=now + timedelta(hours=1),  # a form that sends UK summer time labelled Z
        consent_email=True,
    )
    with sessions.begin() as session:
        record_events(session, [signup], accepted_at=now)
        store_nudges(session, [email_request(WELCOME, "welcome", now, signup.event_id)])
    with sessions.begin() as session:
        assert has_consent(session, SID, "email")
        assert withdraw(session, WELCOME, source="unsubscribe-link") is not None
    with sessions() as session:
        assert not has_consent(session, SID, "email")
