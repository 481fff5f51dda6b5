"""Property: no message goes out without consent, whatever the order of grants, opt-outs and sends.

A hypothesis state machine drives the real writers (record_events, withdraw, suppress,
lift_suppression, store_nudges) and the Dispatcher against a database emptied for each example,
with a clock that only moves forward (some event times lag or lead it: a re-imported old grant,
a form whose clock runs ahead). Beside it a plain-Python oracle keeps what the rules say the
state is: per supporter and channel the newest consent decision (stamped with its event time,
never later than its arrival; ties go to the later write), per address whether it is
suppressed, per supporter the current contact details. After every dispatch each message that
reached a sender or the outbox must have been granted and unsuppressed at that moment, every
nudge must have the status and reason the oracle predicts, and no nudge id goes out twice.
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import ClassVar, Literal
from unittest import mock

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    multiple,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

import producers.unsubscribe
from consumers.dispatch import Dispatcher
from consumers.messages import OutgoingMessage, Sender
from consumers.rendering import TemplateBook
from consumers.repository import store_nudges
from infra.consent import lift_suppression, suppress
from infra.db import Base, ConsentRecord, Nudge, OutboxMessage, session_factory
from producers.ledger import record_events
from producers.unsubscribe import withdraw
from schemas.events import ConsentChanged, ContactFields, NudgeRequested, SupporterSignup
from tests.integration.test_dispatch import RecordingSender

Channel = Literal["email", "sms"]
CHANNELS: tuple[Channel, ...] = ("email", "sms")
LINK_KEY = "test-key"
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
STEP = timedelta(seconds=1)
"""Every operation moves the clock on by at least this, so consent records stamped at
arrival come in increasing order."""
SUPPORTERS = [f"sup_{n:032x}" for n in range(1, 4)]
EMAILS = ["ann@example.org", "bo@example.org"]
PHONES = ["+447700900001", "+447700900002"]
"""Few people and fewer addresses, so that some share an email or a phone."""
TEMPLATES = ["welcome", "we_miss_you"]
SENDER_MODES: dict[str, tuple[Channel, ...]] = {
    "providers for both": ("email", "sms"),
    "email provider, sms outbox": ("email",),
    "sms provider, email outbox": ("sms",),
    "outbox for both": (),
}
SKEWS = [
    timedelta(0),
    timedelta(minutes=-1),
    timedelta(hours=-1),
    timedelta(days=-3),  # an old grant re-imported after a newer withdrawal
    timedelta(hours=1),  # a form whose clock runs ahead: stamped at arrival instead
]

CONTACTS = st.tuples(st.sampled_from([*EMAILS, None]), st.sampled_from([*PHONES, None])).filter(
    lambda c: c != (None, None)
)
TICKS = st.tuples(st.booleans(), st.booleans())
WAITS = [STEP, timedelta(minutes=5), timedelta(hours=3), timedelta(days=2)]
DIRECT_ROW = "direct_row"
Outcome = tuple[str, str | None]
"""A nudge's (status, reason_code)."""


# --- the oracle ------------------------------------------------------------------------------


@dataclass
class Oracle:
    """What the consent rules say, kept without the database or the code under test."""

    consent: dict[tuple[str, Channel], tuple[datetime, int, bool]] = field(default_factory=dict)
    """(supporter, channel) -> the newest decision: (stamp, write order, granted)."""
    writes: int = 0
    suppressed: set[tuple[Channel, str]] = field(default_factory=set)
    contacts: dict[str, dict[Channel, str | None]] = field(default_factory=dict)
    """Supporters with a row, and their current email and phone."""
    nudges: dict[str, tuple[str, Channel]] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    delivered: dict[str, str] = field(default_factory=dict)
    """nudge id -> the address its one message went to."""

    def decide(
        self, sid: str, channel: Channel, granted: bool, event_time: datetime, now: datetime
    ) -> None:
        """A consent decision counts from its event time, but never later than its arrival;
        the newest stamp wins, and of equal stamps the later written."""
        self.writes += 1
        entry = (min(event_time, now), self.writes, granted)
        kept = self.consent.get((sid, channel))
        if kept is None or entry[:2] >= kept[:2]:
            self.consent[sid, channel] = entry

    def granted(self, sid: str, channel: Channel) -> bool:
        kept = self.consent.get((sid, channel))
        return kept is not None and kept[2]

    def address(self, sid: str, channel: Channel) -> str | None:
        return self.contacts.get(sid, {}).get(channel)

    def holders(self, channel: Channel, address: str) -> list[str]:
        return [sid for sid in sorted(self.contacts) if self.address(sid, channel) == address]

    def expect(self, nudge_id: str) -> Outcome:
        """What dispatching a pending nudge now must do."""
        sid, channel = self.nudges[nudge_id]
        address = self.address(sid, channel)
        if address is None:
            return ("skipped", "no_address")
        if not self.granted(sid, channel):
            return ("skipped", "no_consent")
        if (channel, address) in self.suppressed:
            return ("skipped", "suppressed")
        return ("sent", None)


# --- databases -------------------------------------------------------------------------------


def empty(engine: Engine) -> None:
    """Every table emptied: a fresh database for each example, at a fraction of the cost of a
    new one (and one engine for the run: SQLAlchemy caches compiled statements per engine)."""
    tables = list(reversed(Base.metadata.sorted_tables))
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            names = ", ".join(f'"{t.name}"' for t in tables)
            connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                connection.execute(table.delete())


class _Clock:
    """Stands in for ``datetime`` in producers.unsubscribe, whose ``withdraw`` reads the wall
    clock: its ``now`` is the test's clock."""

    at: ClassVar[datetime] = T0

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> datetime:
        return cls.at


# --- the machine -----------------------------------------------------------------------------


class ConsentMachine(RuleBasedStateMachine):
    """Signups, grants, withdrawals, bounces, opt-out links, STOP/START, nudges, dispatches."""

    engine: ClassVar[Engine]
    templates: ClassVar[TemplateBook]

    requested = Bundle("requested")
    delivered = Bundle("delivered")

    def __init__(self) -> None:
        super().__init__()
        empty(self.engine)
        self.sessions: sessionmaker[Session] = session_factory(self.engine)
        self.now = T0
        self.oracle = Oracle()
        self.senders = {channel: RecordingSender(provider=channel) for channel in CHANNELS}
        self.outbox_seen = 0
        self.counter = 0

    def teardown(self) -> None:
        """Every run ends with a dispatch of whatever is still pending, so that each one
        checks something however few of the rules it was given; but not after a failure,
        whose report it would bury."""
        if sys.exc_info()[0] is None:
            self.dispatch("providers for both", STEP)

    def tick(self, by: timedelta = STEP) -> datetime:
        self.now += by
        return self.now

    # --- consent -----------------------------------------------------------------------------

    @initialize(
        people=st.lists(
            st.tuples(st.sampled_from(SUPPORTERS), CONTACTS, TICKS), min_size=1, max_size=3
        )
    )
    def first_signups(
        self, people: list[tuple[str, tuple[str | None, str | None], tuple[bool, bool]]]
    ) -> None:
        for sid, contact, ticks in people:
            self.signup(sid, contact, ticks, "web_form")

    @rule(
        sid=st.sampled_from(SUPPORTERS),
        contact=CONTACTS,
        ticks=TICKS,
        source=st.sampled_from(["web_form", "paper_form", "csv_import"]),
    )
    def signup(
        self,
        sid: str,
        contact: tuple[str | None, str | None],
        ticks: tuple[bool, bool],
        source: str,
    ) -> None:
        """A signup: contact details, and a grant for each ticked box (an unticked box
        withdraws nothing)."""
        now = self.tick()
        email, phone = contact
        event = SupporterSignup(
            event_time=now,
            supporter_id=sid,
            email=email,
            phone=phone,
            first_name="Sam",
            consent_email=ticks[0],
            consent_sms=ticks[1],
            source=source,
        )
        posted = (
            ContactFields(event_time=now, email=email, phone=phone, first_name="Sam")
            if email or phone
            else None
        )
        with self.sessions.begin() as session:
            record_events(session, [event], now, contacts=[posted])
        known = self.oracle.contacts.setdefault(sid, {"email": None, "sms": None})
        known["email"] = email or known["email"]
        known["sms"] = phone or known["sms"]
        for channel, ticked in zip(CHANNELS, ticks, strict=True):
            if ticked:
                self.oracle.decide(sid, channel, True, now, now)

    @rule(
        sid=st.sampled_from(SUPPORTERS),
        channel=st.sampled_from(CHANNELS),
        granted=st.booleans(),
        source=st.sampled_from([DIRECT_ROW, "organiser", "csv_import", "form", "preferences"]),
        skew=st.sampled_from(SKEWS),
    )
    def consent(
        self, sid: str, channel: Channel, granted: bool, source: str, skew: timedelta
    ) -> None:
        """A consent.changed event through the ledger, its event time off the clock by
        ``skew`` (a re-imported old grant, a form whose clock runs ahead); or a consent
        record written directly, stamped now (an organiser's tool, a migration)."""
        now = self.tick()
        with self.sessions.begin() as session:
            if source == DIRECT_ROW:
                skew = timedelta(0)
                session.add(
                    ConsentRecord(
                        supporter_id=sid,
                        channel=channel,
                        granted=granted,
                        source=source,
                        recorded_at=now,
                    )
                )
            else:
                event = ConsentChanged(
                    event_time=now + skew,
                    supporter_id=sid,
                    channel=channel,
                    granted=granted,
                    source=source,
                )
                record_events(session, [event], now)
        self.oracle.decide(sid, channel, granted, now + skew, now)

    @rule(nudge_id=delivered)
    def unsubscribe_link(self, nudge_id: str) -> None:
        """The recipient of a delivered message follows its opt-out link: the channel's
        consent is withdrawn and the address it went to is suppressed."""
        sid, channel = self.oracle.nudges[nudge_id]
        now = self.tick()
        _Clock.at = now
        with (
            mock.patch.object(producers.unsubscribe, "datetime", _Clock),
            self.sessions.begin() as session,
        ):
            assert withdraw(session, nudge_id, "unsubscribe_link", key=LINK_KEY) is not None
        self.oracle.decide(sid, channel, False, now, now)
        self.oracle.suppressed.add((channel, self.oracle.delivered[nudge_id]))

    @rule(email=st.sampled_from(EMAILS))
    def email_bounced(self, email: str) -> None:
        """A hard bounce or a spam report: the address suppressed, nobody's consent changed."""
        now = self.tick()
        with self.sessions.begin() as session:
            suppress(session, LINK_KEY, "email", email, "hard bounce", "sendgrid:bounce", now)
        self.oracle.suppressed.add(("email", email))

    @rule(phone=st.sampled_from(PHONES))
    def sms_stop(self, phone: str) -> None:
        """STOP from a phone: suppressed, and SMS consent withdrawn for whoever has it."""
        now = self.tick()
        holders = self.oracle.holders("sms", phone)
        with self.sessions.begin() as session:
            suppress(session, LINK_KEY, "sms", phone, "replied STOP", "sms_keyword:STOP", now)
            record_events(session, [self._sms(sid, False, "STOP", now) for sid in holders], now)
        self.oracle.suppressed.add(("sms", phone))
        for sid in holders:
            self.oracle.decide(sid, "sms", False, now, now)

    @rule(phone=st.sampled_from(PHONES))
    def sms_start(self, phone: str) -> None:
        """START from a phone: the suppression lifted, and SMS consent restored for whoever
        has the phone and withdrew it (someone who never granted it gets nothing)."""
        now = self.tick()
        restored = [
            sid
            for sid in self.oracle.holders("sms", phone)
            if (sid, "sms") in self.oracle.consent and not self.oracle.granted(sid, "sms")
        ]
        with self.sessions.begin() as session:
            lift_suppression(session, LINK_KEY, "sms", phone, "sms_keyword:START", now)
            record_events(session, [self._sms(sid, True, "START", now) for sid in restored], now)
        self.oracle.suppressed.discard(("sms", phone))
        for sid in restored:
            self.oracle.decide(sid, "sms", True, now, now)

    @staticmethod
    def _sms(sid: str, granted: bool, word: str, now: datetime) -> ConsentChanged:
        return ConsentChanged(
            event_time=now,
            supporter_id=sid,
            channel="sms",
            granted=granted,
            source=f"sms_keyword:{word}",
        )

    # --- nudges and sending ------------------------------------------------------------------

    @rule(
        target=requested,
        sid=st.sampled_from(SUPPORTERS),
        channel=st.sampled_from(CHANNELS),
        template=st.sampled_from(TEMPLATES),
        holdout=st.sampled_from([False, False, True]),
    )
    def request_nudge(self, sid: str, channel: Channel, template: str, holdout: bool) -> str:
        return self._request(sid, channel, template, holdout)

    @initialize(
        target=requested,
        wanted=st.lists(
            st.tuples(st.sampled_from(SUPPORTERS), st.sampled_from(CHANNELS)), max_size=4
        ),
    )
    def first_nudges(self, wanted: list[tuple[str, Channel]]) -> object:
        return multiple(*(self._request(sid, channel, "welcome", False) for sid, channel in wanted))

    def _request(self, sid: str, channel: Channel, template: str, holdout: bool) -> str:
        now = self.tick()
        self.counter += 1
        nudge_id = f"{template}:{sid}:{channel}:{self.counter}"
        self._store(nudge_id, sid, channel, template, holdout, now)
        self.oracle.nudges[nudge_id] = (sid, channel)
        self.oracle.outcomes[nudge_id] = ("held_out", None) if holdout else ("pending", None)
        return nudge_id

    @rule(nudge_id=requested, channel=st.sampled_from(CHANNELS))
    def request_again(self, nudge_id: str, channel: Channel) -> None:
        """The same idempotency key requested again (a replay), even with another channel:
        ignored, whatever became of the first."""
        now = self.tick()
        sid, _ = self.oracle.nudges[nudge_id]
        self._store(nudge_id, sid, channel, "welcome", False, now)

    def _store(
        self, nudge_id: str, sid: str, channel: Channel, template: str, holdout: bool, at: datetime
    ) -> None:
        request = NudgeRequested(
            event_time=at,
            nudge_id=nudge_id,
            supporter_id=sid,
            channel=channel,
            template=template,
            rule=template,
            cause_event_id=uuid.uuid4(),
            context={"area": "Hackney"},
            holdout=holdout,
        )
        with self.sessions.begin() as session:
            store_nudges(session, [request])

    @rule(
        target=delivered, mode=st.sampled_from(sorted(SENDER_MODES)), after=st.sampled_from(WAITS)
    )
    def dispatch(self, mode: str, after: timedelta) -> object:
        """A while later, send everything due, with a provider for some channels and the
        outbox for the rest; check every message against the oracle as it stands now."""
        now = self.tick(after)
        oracle = self.oracle
        pending = [n for n, (status, _) in oracle.outcomes.items() if status == "pending"]
        expected = {nudge_id: oracle.expect(nudge_id) for nudge_id in pending}
        senders: dict[str, Sender] = {c: self.senders[c] for c in SENDER_MODES[mode]}
        before = {c: len(s.sent) for c, s in self.senders.items()}
        stage = Dispatcher(
            self.sessions,
            self.templates,
            senders,
            "Grassroots Together",
            "http://x.test",
            link_key=LINK_KEY,
            clock=lambda: now,
        )

        assert stage.dispatch_pending() == len(pending)

        out: list[tuple[str, OutgoingMessage | OutboxMessage]] = []
        for channel, sender in self.senders.items():
            out += [(channel, m) for m in sender.sent[before[channel] :]]
            if channel not in senders:
                assert len(sender.sent) == before[channel], f"{mode}: the {channel} provider used"
        with self.sessions() as session:
            rows = list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))
            statuses = {
                n.nudge_id: (n.status, n.reason_code) for n in session.scalars(select(Nudge))
            }
        out += [(row.channel, row) for row in rows[self.outbox_seen :]]
        self.outbox_seen = len(rows)
        went: list[str] = []
        for via, message in out:
            nudge_id = message.nudge_id
            to = message.to if isinstance(message, OutgoingMessage) else message.to_address
            assert nudge_id not in oracle.delivered, f"{nudge_id} went out twice"
            assert nudge_id in oracle.nudges, f"{nudge_id} was never requested"
            sid, channel = oracle.nudges[nudge_id]
            assert via == channel, f"{nudge_id}: sent by {via}, requested for {channel}"
            assert oracle.granted(sid, channel), f"{nudge_id}: sent without {channel} consent"
            assert (channel, to) not in oracle.suppressed, f"{nudge_id}: sent to a suppressed {to}"
            assert to == oracle.address(sid, channel), f"{nudge_id}: not the current address"
            oracle.delivered[nudge_id] = to
            went.append(nudge_id)

        assert sorted(went) == sorted(n for n, o in expected.items() if o[0] == "sent")
        oracle.outcomes.update(expected)
        assert statuses == oracle.outcomes
        return multiple(*went)


# --- the tests -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def templates() -> TemplateBook:
    return TemplateBook()


def test_no_message_without_consent(engine: Engine, templates: TemplateBook) -> None:
    """On each database of the ``engine`` fixture (migrated), fewer examples on PostgreSQL,
    where each one costs more round trips."""

    class Machine(ConsentMachine):
        pass

    Machine.engine = engine
    Machine.templates = templates
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=100 if engine.dialect.name == "sqlite" else 25,
            stateful_step_count=40,
            report_multiple_bugs=False,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_an_opt_out_link_suppresses_the_address_the_message_went_to(
    sessions: sessionmaker[Session], templates: TemplateBook
) -> None:
    """The counterexample the property found, by hand: a welcome email to ann@; the supporter
    moves to bo@; the unsubscribe link in the email to ann@ is followed; ann@ comes back
    under another id (a re-import, a shared inbox) with the box ticked: it must not be mailed."""
    first, second = SUPPORTERS[:2]
    stage = Dispatcher(
        sessions, templates, {}, "Grassroots Together", "http://x.test", link_key=LINK_KEY
    )

    def signup(sid: str, email: str) -> None:
        now = datetime.now(UTC)
        event = SupporterSignup(
            event_time=now, supporter_id=sid, email=email, consent_email=True, source="web_form"
        )
        with sessions.begin() as session:
            record_events(
                session, [event], now, contacts=[ContactFields(event_time=now, email=email)]
            )

    def welcome(sid: str) -> str:
        nudge_id = f"welcome:{sid}"
        with sessions.begin() as session:
            store_nudges(
                session,
                [
                    NudgeRequested(
                        event_time=datetime.now(UTC),
                        nudge_id=nudge_id,
                        supporter_id=sid,
                        channel="email",
                        template="welcome",
                        rule="welcome",
                        cause_event_id=uuid.uuid4(),
                    )
                ],
            )
        return nudge_id

    signup(first, "ann@example.org")
    to_ann = welcome(first)
    assert stage.dispatch(to_ann) == "sent"
    signup(first, "bo@example.org")
    with sessions.begin() as session:
        withdraw(session, to_ann, "unsubscribe_link", key=LINK_KEY)
    signup(second, "ann@example.org")

    assert stage.dispatch(welcome(second)) == "skipped"
    with sessions() as session:
        assert [r.to_address for r in session.scalars(select(OutboxMessage))] == ["ann@example.org"]
