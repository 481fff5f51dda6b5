"""The unsubscribe link every email carries works, and the dispatcher honours it at once."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from consumers.dispatch import Dispatcher
from consumers.rendering import TemplateBook
from consumers.repository import list_outbox, store_nudges
from infra.db import ConsentRecord, LedgerEvent, SupporterAlias
from producers.unsubscribe import withdraw
from schemas.events import ConsentChanged, NudgeRequested
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

    # The stream hears of it too: a consent.changed in the ledger, the same as the record.
    (changed,) = consent_changes(sessions)
    assert (changed.supporter_id, changed.channel, changed.granted, changed.source) == (
        SID,
        "email",
        False,
        "unsubscribe_link",
    )
    with sessions() as session:
        (withdrawn,) = session.scalars(
            select(ConsentRecord).where(ConsentRecord.granted.is_(False))
        )
    assert (withdrawn.event_id, withdrawn.recorded_at) == (changed.event_id, changed.event_time)


def consent_changes(sessions: sessionmaker[Session]) -> list[ConsentChanged]:
    with sessions() as session:
        found = session.scalars(select(LedgerEvent).where(LedgerEvent.topic == "consent.changed"))
        events = []
        for row in found:
            event = ConsentChanged.model_validate_json(row.payload)
            assert row.key == event.supporter_id
            events.append(event)
        return events


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
    assert consent_changes(sessions) == []


def test_an_opt_out_outranks_a_signup_stamped_ahead_of_the_clock(
    sessions: sessionmaker[Session],
) -> None:
    from consumers.repository import has_consent
    from producers.ledger import record_events
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
        assert withdraw(session, WELCOME, source="unsubscribe_link") is not None
    with sessions() as session:
        assert not has_consent(session, SID, "email")


def test_an_opt_out_from_a_nudge_to_a_merged_away_id_is_recorded_for_the_survivor(
    sessions: sessionmaker[Session],
) -> None:
    from consumers.repository import has_consent

    survivor = "sup_" + "2" * 32
    seed(sessions)  # SID has email and SMS consent, and was sent WELCOME before the merge
    with sessions.begin() as session:
        store_nudges(session, [email_request(WELCOME, "welcome")])
        session.add(SupporterAlias(absorbed_id=SID, survivor_id=survivor, event_id=uuid.uuid4()))
        session.add(
            ConsentRecord(
                supporter_id=survivor,
                channel="email",
                granted=True,
                source="signup",
                recorded_at=T0,
            )
        )
    with sessions.begin() as session:
        assert withdraw(session, WELCOME, source="unsubscribe_link") is not None

    (changed,) = consent_changes(sessions)
    assert (changed.supporter_id, changed.channel, changed.granted) == (survivor, "email", False)
    with sessions() as session:
        assert not has_consent(session, survivor, "email")
