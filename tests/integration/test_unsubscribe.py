"""The unsubscribe link every email carries works, and the dispatcher honours it at once."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy.orm import Session, sessionmaker

from consumers.rendering import TemplateBook
from consumers.repository import store_nudges
from schemas.events import NudgeRequested
from tests.integration.test_dispatch import INVITE, SID, T0, WELCOME, dispatcher, nudge_row, seed

THANKS = f"first-meeting-thanks:{SID}"


def add_thanks(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        store_nudges(
            session,
            [
                NudgeRequested(
                    event_time=T0,
                    nudge_id=THANKS,
                    supporter_id=SID,
                    channel="email",
                    template="thanks_first_meeting",
                    rule="first-meeting-thanks",
                    cause_event_id=uuid.uuid4(),
                )
            ],
        )


def test_one_click_unsubscribe_stops_the_next_email_but_not_texts(
    api: str, sessions: sessionmaker[Session]
) -> None:
    seed(sessions)
    stage = dispatcher(sessions, TemplateBook())
    assert stage.dispatch(WELCOME) == "sent"

    page = httpx.get(f"{api}/unsubscribe/{WELCOME}")
    assert page.status_code == 200
    assert '<form method="post">' in page.text
    assert "Grassroots Together" in page.text

    # What a mail client sends for List-Unsubscribe-Post (RFC 8058).
    done = httpx.post(
        f"{api}/unsubscribe/{WELCOME}",
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert done.status_code == 200
    assert "unsubscribed" in done.text

    add_thanks(sessions)
    assert stage.dispatch(THANKS) == "skipped"
    assert nudge_row(sessions, THANKS).reason == "no email consent"
    assert stage.dispatch(INVITE) == "sent"  # consent is per channel


def test_an_unknown_link_is_a_404_and_changes_nothing(
    api: str, sessions: sessionmaker[Session]
) -> None:
    seed(sessions)
    assert httpx.get(f"{api}/unsubscribe/welcome:nobody").status_code == 404
    assert httpx.post(f"{api}/unsubscribe/welcome:nobody").status_code == 404
    assert dispatcher(sessions, TemplateBook()).dispatch(WELCOME) == "sent"
