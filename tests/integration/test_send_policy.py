"""Quiet hours, staleness, caps across rules, the supporter's zone and the suppression list,
through the real dispatcher on both databases, with the settings' default policy."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Literal

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from consumers.dispatch import Dispatcher
from consumers.rendering import TemplateBook
from consumers.repository import list_outbox, store_nudges
from engage.wiring import sending_policy
from infra.db import LedgerEvent, Nudge, Supporter
from infra.settings import Settings
from producers.ledger import record_events
from producers.unsubscribe import withdraw
from schemas.events import ConsentChanged, NudgeRequested
from tests.integration.test_dispatch import EMAIL, PHONE, SID, nudge_row, seed

KEY = "test-key"
ORG = "Grassroots Together"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def stage(
    sessions: sessionmaker[Session],
    clock: Clock,
    url: str = "http://x.test",
    sms_opt_out_link: bool = False,
) -> Dispatcher:
    """The outbox dispatcher with the policy `engage` builds from default settings."""
    policy = sending_policy(Settings())
    return Dispatcher(
        sessions,
        TemplateBook(),
        {},
        ORG,
        url,
        KEY,
        policy=policy,
        clock=clock,
        sms_opt_out_link=sms_opt_out_link,
    )


def request(
    sessions: sessionmaker[Session],
    rule: str,
    channel: Literal["email", "sms"],
    at: datetime,
    template: str | None = None,
    supporter_id: str = SID,
) -> str:
    nudge_id = f"{rule}:{supporter_id}:{uuid.uuid4().hex[:6]}"
    with sessions.begin() as session:
        store_nudges(
            session,
            [
                NudgeRequested(
                    event_time=at,
                    nudge_id=nudge_id,
                    supporter_id=supporter_id,
                    channel=channel,
                    template=template or "welcome",
                    rule=rule,
                    cause_event_id=uuid.uuid4(),
                )
            ],
        )
        # Stored (planned) at the test's time, not the machine's.
        session.execute(update(Nudge).where(Nudge.nudge_id == nudge_id).values(created_at=at))
    return nudge_id


def only_seeded(sessions: sessionmaker[Session]) -> None:
    """The seeded supporter (both consents), without the seed's own nudges."""
    seed(sessions)
    with sessions.begin() as session:
        for row in session.scalars(select(Nudge)):
            session.delete(row)


def statuses(sessions: sessionmaker[Session], nudge_id: str) -> list[tuple[str, str | None]]:
    """The message.status events written for a nudge, in order: (status, reason_code)."""
    with sessions() as session:
        rows = session.scalars(
            select(LedgerEvent.payload)
            .where(LedgerEvent.topic == "message.status")
            .order_by(LedgerEvent.seq)
        )
        events = [json.loads(p) for p in rows]
    return [(e["status"], e["reason_code"]) for e in events if e["nudge_id"] == nudge_id]


def test_an_sms_at_night_is_held_until_nine_london_time(
    sessions: sessionmaker[Session],
) -> None:
    only_seeded(sessions)
    clock = Clock(utc(2026, 1, 14, 22, 30))
    nudge_id = request(sessions, "invite", "sms", clock.now)
    dispatcher = stage(sessions, clock)

    assert dispatcher.dispatch(nudge_id) == "held"
    row = nudge_row(sessions, nudge_id)
    assert (row.reason_code, row.not_before) == ("quiet_hours", utc(2026, 1, 15, 9))
    assert row.reason is not None and "21:00-09:00 (Europe/London)" in row.reason

    clock.now = utc(2026, 1, 15, 8, 59)
    assert dispatcher.dispatch_pending() == 0
    clock.now = utc(2026, 1, 15, 9, 0)
    assert dispatcher.dispatch_pending() == 1
    assert nudge_row(sessions, nudge_id).status == "sent"
    assert statuses(sessions, nudge_id) == [("held", "quiet_hours"), ("sent", None)]


def test_held_over_the_spring_change_it_goes_at_nine_summer_time(
    sessions: sessionmaker[Session],
) -> None:
    only_seeded(sessions)
    clock = Clock(utc(2026, 3, 28, 23, 0))  # 23:00 GMT; clocks go forward at 01:00
    nudge_id = request(sessions, "invite", "sms", clock.now)
    dispatcher = stage(sessions, clock)

    assert dispatcher.dispatch(nudge_id) == "held"
    assert nudge_row(sessions, nudge_id).not_before == utc(2026, 3, 29, 8, 0)  # 09:00 BST
    clock.now = utc(2026, 3, 29, 8, 0)
    assert dispatcher.dispatch(nudge_id) == "sent"


def test_a_held_sms_that_went_stale_is_dropped_with_the_reason(
    sessions: sessionmaker[Session],
) -> None:
    only_seeded(sessions)
    clock = Clock(utc(2026, 1, 14, 22, 0))
    nudge_id = request(sessions, "invite", "sms", clock.now)
    dispatcher = stage(sessions, clock)
    assert dispatcher.dispatch(nudge_id) == "held"  # 11 h old at 09:00: inside 12 h

    clock.now = utc(2026, 1, 15, 11, 0)  # the sender was down until 11:00: 13 h old
    assert dispatcher.dispatch(nudge_id) == "skipped"
    row = nudge_row(sessions, nudge_id)
    assert row.reason_code == "stale"
    assert row.reason is not None and "12 h limit" in row.reason


def test_an_sms_that_would_go_stale_before_morning_is_dropped_at_once(
    sessions: sessionmaker[Session],
) -> None:
    only_seeded(sessions)
    clock = Clock(utc(2026, 1, 14, 20, 30))
    nudge_id = request(sessions, "invite", "sms", clock.now)
    clock.now = utc(2026, 1, 14, 21, 5)  # 09:00 is 12.5 h after it was planned
    assert stage(sessions, clock).dispatch(nudge_id) == "skipped"
    assert nudge_row(sessions, nudge_id).reason_code == "stale"


def test_caps_hold_across_rules_and_reset_the_next_local_day(
    sessions: sessionmaker[Session],
) -> None:
    only_seeded(sessions)
    clock = Clock(utc(2026, 1, 14, 12, 0))
    dispatcher = stage(sessions, clock)
    email_ids = [
        request(sessions, rule, "email", clock.now, template)
        for rule, template in (
            ("welcome", "welcome"),
            ("thanks", "thanks_first_meeting"),
            ("we-miss-you", "we_miss_you"),
        )
    ]
    text_ids = [request(sessions, rule, "sms", clock.now) for rule in ("invite", "sorry")]

    assert dispatcher.dispatch_pending() == 5
    got = [nudge_row(sessions, n) for n in email_ids + text_ids]
    emails = sorted((r.status, r.reason_code, r.reason) for r in got if r.channel == "email")
    assert emails == [
        ("sent", None, None),
        ("sent", None, None),
        (
            "skipped",
            "cap_day",
            "2 email message(s) already sent today (Europe/London); the cap is 2 a day",
        ),
    ]
    texts = sorted((r.status, r.reason_code) for r in got if r.channel == "sms")
    assert texts == [("sent", None), ("skipped", "cap_day")]

    clock.now = utc(2026, 1, 15, 10, 0)
    tomorrow = request(sessions, "invite-again", "sms", clock.now)
    assert dispatcher.dispatch(tomorrow) == "sent"


def test_the_weekly_cap_counts_every_rule_since_monday(sessions: sessionmaker[Session]) -> None:
    only_seeded(sessions)
    clock = Clock(utc(2026, 1, 12, 12, 0))  # a Monday
    dispatcher = stage(sessions, clock)
    sent = []
    for day in range(4):  # the SMS cap is 1 a day and 3 a week
        clock.now = utc(2026, 1, 12 + day, 12, 0)
        nudge_id = request(sessions, f"rule-{day}", "sms", clock.now)
        sent.append(dispatcher.dispatch(nudge_id))
    assert sent == ["sent", "sent", "sent", "skipped"]
    with sessions() as session:
        fourth = session.scalars(select(Nudge).where(Nudge.rule == "rule-3")).one()
    assert fourth.reason_code == "cap_week"


def test_quiet_hours_and_caps_use_the_supporters_own_zone(
    sessions: sessionmaker[Session],
) -> None:
    only_seeded(sessions)
    with sessions.begin() as session:
        session.execute(
            update(Supporter)
            .where(Supporter.supporter_id == SID)
            .values(timezone="America/New_York")
        )
    clock = Clock(utc(2026, 1, 14, 13, 0))  # 13:00 in London, 08:00 in New York
    nudge_id = request(sessions, "invite", "sms", clock.now)
    dispatcher = stage(sessions, clock)
    assert dispatcher.dispatch(nudge_id) == "held"
    assert nudge_row(sessions, nudge_id).not_before == utc(2026, 1, 14, 14, 0)  # 09:00 EST
    clock.now = utc(2026, 1, 14, 14, 0)
    assert dispatcher.dispatch(nudge_id) == "sent"


def test_an_unsubscribed_address_stays_suppressed_after_a_reimport(
    sessions: sessionmaker[Session],
) -> None:
    only_seeded(sessions)
    clock = Clock(utc(2026, 1, 14, 12, 0))
    dispatcher = stage(sessions, clock)
    first = request(sessions, "welcome", "email", clock.now)
    assert dispatcher.dispatch(first) == "sent"
    with sessions.begin() as session:
        withdraw(session, first, source="unsubscribe_link", key=KEY)

    # A re-import of an old list ticks the consent box again, under the same id and another.
    other = "sup_" + "2" * 32
    # After the withdrawal's own stamp (the real clock), at noon so the SMS below is not held.
    clock.now = (datetime.now(UTC) + timedelta(days=1)).replace(hour=12, minute=0)
    with sessions.begin() as session:
        session.add(Supporter(supporter_id=other, email=EMAIL, phone=PHONE))
        record_events(
            session,
            [
                ConsentChanged(
                    event_time=clock.now,
                    supporter_id=sid,
                    channel="email",
                    granted=True,
                    source="csv_import",
                )
                for sid in (SID, other)
            ],
            clock.now,
        )
    again = [
        request(sessions, "welcome-again", "email", clock.now, supporter_id=s) for s in (SID, other)
    ]
    assert [dispatcher.dispatch(n) for n in again] == ["skipped", "skipped"]
    assert {nudge_row(sessions, n).reason_code for n in again} == {"suppressed"}
    # Texts were never withdrawn.
    assert dispatcher.dispatch(request(sessions, "invite", "sms", clock.now)) == "sent"


@pytest.mark.usefixtures("settings")
def test_texts_from_a_one_way_sender_end_with_a_working_short_opt_out_link(
    api: str, sessions: sessionmaker[Session]
) -> None:
    only_seeded(sessions)
    clock = Clock(datetime.now(UTC).replace(hour=12, minute=0))
    dispatcher = stage(sessions, clock, api, sms_opt_out_link=True)
    first = request(sessions, "invite", "sms", clock.now)
    assert dispatcher.dispatch(first) == "sent"
    with sessions() as session:
        (text,) = [r for r in list_outbox(session, 10) if r["channel"] == "sms"]
    match = re.search(r"Opt out: (http://\S+/o/([a-z2-7]{10}))$", text["body"])
    assert match, text["body"]
    assert "Reply STOP" not in text["body"]
    link, code = match.groups()
    assert nudge_row(sessions, first).opt_out_code == code

    page = httpx.get(link)
    assert page.status_code == 200 and "Stop all campaign texts" in page.text
    assert httpx.get(f"{api}/o/aaaaaaaaaa").status_code == 404
    assert httpx.post(link).status_code == 200

    clock.now += timedelta(days=2)
    second = request(sessions, "invite-again", "sms", clock.now)
    assert dispatcher.dispatch(second) == "skipped"
    assert nudge_row(sessions, second).reason_code == "no_consent"
    # Email consent was not touched.
    assert dispatcher.dispatch(request(sessions, "welcome", "email", clock.now)) == "sent"
