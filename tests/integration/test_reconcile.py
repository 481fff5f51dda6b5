"""Ambiguous sends settled through the real SendGrid and Twilio SDKs against the local stub.

A send with no answer is ambiguous and never resent blindly; ``reconcile()`` asks the provider
(SendGrid's Email Activity API, Twilio's message list) once ``reconcile_after_s`` has passed:
the provider has it -> sent with its id; it has not -> pending, sent again, once; it cannot
tell -> still ambiguous. A sender that died mid-call leaves a claim the lease turns ambiguous.
Time moves with the dispatcher's ``clock``, never with sleeps.

Also here: replaying the whole nudge.requested topic from offset 0 (a new consumer group, the
real ConsumerWorker) calls no provider again; and a second sender never duplicates a nudge of a
batch that outlived its lease, nor one another sender claimed again meanwhile.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from consumers.dispatch import Dispatcher, SendingPolicy
from consumers.messages import OutgoingMessage, Sender, SendError, SendResult
from consumers.providers import SendGridEmailSender, TwilioSmsSender
from consumers.rendering import TemplateBook
from consumers.repository import claim_nudges, store_nudges
from consumers.runner import ConsumerWorker
from infra.broker import EmbeddedBroker
from infra.db import LedgerEvent, Nudge
from infra.kafka import ConsumerSettings, ledger_producer
from infra.topics import admin_client
from schemas.events import MessageStatus, NudgeRequested
from tests.factories import add_supporter, nudge_request
from tests.integration.running import DispatchRounds, Running
from tests.polling import wait_until
from tests.stub_providers import StubProviders

Channel = Literal["email", "sms"]
SID = "sup_" + "2" * 32
EMAIL = "jo.bloggs@example.org"
PHONE = "+447911123456"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
TIMEOUT_S = 0.5
LATE_S = 5.0
"""How late the stub answers a send that must time out (the sender gives up at TIMEOUT_S)."""
LEASE_S = 60.0
RECONCILE_AFTER_S = 300.0
NUDGES: dict[Channel, str] = {"email": f"welcome:{SID}:email", "sms": f"welcome:{SID}:sms"}
KEYS: dict[Channel, str] = {"email": NUDGES["email"], "sms": PHONE}
"""What the stub counts each channel's sends by: the nudge_id custom arg; the To number."""
SEND_PATHS = ("/v3/mail/send", f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json")


class Clock:
    """The dispatcher's clock: starts at the real time (the stub stamps sends with it and
    Twilio's lookup compares the two), moves only when told."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Rig:
    stub: StubProviders
    sessions: sessionmaker[Session]
    clock: Clock
    dispatcher: Dispatcher

    def status(self, channel: Channel) -> Nudge:
        with self.sessions() as session:
            row = session.get(Nudge, NUDGES[channel])
            assert row is not None
            return row

    def sends(self, channel: Channel) -> int:
        """Sends of this nudge the provider has on record."""
        return self.stub.sends_by_key()[KEYS[channel]]

    def posts(self) -> int:
        """Send requests that reached the provider, kept or not."""
        return sum(1 for r in self.stub.requests if r.method == "POST" and r.path in SEND_PATHS)

    def lookups(self) -> int:
        return sum(1 for r in self.stub.requests if r.method == "GET")

    def events(self, channel: Channel) -> list[tuple[str, str | None]]:
        """(status, reason_code) of the nudge's message.status events, oldest first."""
        with self.sessions() as session:
            payloads = session.scalars(
                select(LedgerEvent.payload)
                .where(LedgerEvent.topic == MessageStatus.topic)
                .order_by(LedgerEvent.seq)
            )
            found = [json.loads(p) for p in payloads]
        return [(e["status"], e["reason_code"]) for e in found if e["nudge_id"] == NUDGES[channel]]


@pytest.fixture
def stub(stub_providers: StubProviders) -> StubProviders:
    return stub_providers


def real_senders(url: str) -> dict[str, Sender]:
    return {
        "email": SendGridEmailSender(
            "SG.test-key", "hello@example.org", "Grassroots Together", url, TIMEOUT_S
        ),
        "sms": TwilioSmsSender(ACCOUNT_SID, "token", "+447700900000", url, TIMEOUT_S),
    }


def make_dispatcher(
    sessions: sessionmaker[Session], senders: dict[str, Sender], clock: Clock
) -> Dispatcher:
    return Dispatcher(
        sessions,
        TemplateBook(),
        senders,
        "Grassroots Together",
        "http://x.test",
        link_key="test-key",
        policy=SendingPolicy(lease_s=LEASE_S, reconcile_after_s=RECONCILE_AFTER_S),
        clock=clock,
    )


@pytest.fixture
def rig(stub: StubProviders, sessions: sessionmaker[Session]) -> Rig:
    """One supporter with an address and consent on both channels, a welcome nudge on each."""
    clock = Clock()
    with sessions.begin() as session:
        add_supporter(
            session,
            SID,
            email=EMAIL,
            phone=PHONE,
            consent=NUDGES,
            consented_at=clock.now - timedelta(days=1),
        )
        store_nudges(
            session,
            [
                nudge_request(nudge_id, SID, channel, clock.now, context={"area": "Hackney"})
                for channel, nudge_id in NUDGES.items()
            ],
        )
    return Rig(stub, sessions, clock, make_dispatcher(sessions, real_senders(stub.url), clock))


def nothing_done() -> dict[str, int]:
    return {"expired": 0, "released": 0, "confirmed": 0, "resend": 0, "unknown": 0}


def send_without_answer(rig: Rig, channel: Channel) -> None:
    """The stub keeps the send but answers after the sender gave up: ambiguous."""
    rig.stub.script(delay_s=LATE_S)
    assert rig.dispatcher.dispatch(NUDGES[channel]) == "ambiguous"
    row = rig.status(channel)
    assert (row.status, row.reason_code, row.provider_message_id) == (
        "ambiguous",
        "no_answer",
        None,
    )


def test_the_stub_kill_hook_strikes_after_keeping_a_send_and_before_answering(
    stub: StubProviders,
) -> None:
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stub.kill_on(lambda: victim.pid, every=2)
        sender = real_senders(stub.url)["email"]
        mails = [OutgoingMessage(f"n{i}", "email", EMAIL, "Hello", "Hi Jo") for i in range(3)]

        assert sender.send(mails[0]).message_id
        with pytest.raises(SendError) as caught:
            sender.send(mails[1])  # kept, then the connection closed unanswered
        assert caught.value.ambiguous
        assert victim.wait(5) == -signal.SIGKILL
        stub.kill_off()
        assert sender.send(mails[2]).message_id
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(5)

    assert stub.sends_by_key() == Counter({"n0": 1, "n1": 1, "n2": 1})
    assert [s.key for s in stub.killed] == ["n1"]
    assert (stub.kills, stub.kill_skips) == (1, 0)


CHANNELS = pytest.mark.parametrize("channel", ["email", "sms"])


@CHANNELS
def test_a_timeout_the_provider_kept_is_ambiguous_then_confirmed_without_a_resend(
    rig: Rig, channel: Channel
) -> None:
    send_without_answer(rig, channel)
    assert rig.sends(channel) == 1  # the provider did take it

    # Not resent by the sending loop, however often it runs.
    assert rig.dispatcher.dispatch(NUDGES[channel]) is None
    other: Channel = "sms" if channel == "email" else "email"
    assert rig.dispatcher.dispatch_pending() == 1  # only the other channel's nudge
    assert rig.status(other).status == "sent"
    assert rig.dispatcher.dispatch_pending() == 0

    # Too early to look it up: the provider may not show it yet.
    rig.clock.advance(RECONCILE_AFTER_S - 1)
    assert rig.dispatcher.reconcile() == nothing_done()
    assert rig.lookups() == 0
    assert rig.status(channel).status == "ambiguous"

    rig.clock.advance(2)
    assert rig.dispatcher.reconcile() == {**nothing_done(), "confirmed": 1}

    [kept] = [s for s in rig.stub.accepted if s.key == KEYS[channel]]
    row = rig.status(channel)
    assert (row.status, row.reason_code) == ("sent", "confirmed")
    assert row.provider_message_id == kept.message_id
    assert row.provider == ("sendgrid" if channel == "email" else "twilio")
    assert row.sent_at == rig.clock.now
    assert rig.events(channel) == [("ambiguous", "no_answer"), ("sent", "confirmed")]
    assert rig.lookups() == 1
    assert rig.dispatcher.dispatch_pending() == 0
    assert rig.dispatcher.reconcile() == nothing_done()
    assert rig.sends(channel) == 1
    assert rig.posts() == 2  # one per nudge: this one never went twice


@pytest.mark.parametrize("lost", ["dropped", "forgotten"])
@CHANNELS
def test_a_timeout_the_provider_did_not_keep_is_sent_again_exactly_once(
    rig: Rig, channel: Channel, lost: str
) -> None:
    if lost == "dropped":  # the connection closed once the request was read; nothing kept
        rig.stub.script(drop=True)
        assert rig.dispatcher.dispatch(NUDGES[channel]) == "ambiguous"
    else:  # kept, answered too late, then lost by the provider
        send_without_answer(rig, channel)
        assert rig.stub.forget(KEYS[channel]) == 1
    assert rig.sends(channel) == 0
    assert rig.dispatcher.dispatch(NUDGES[channel]) is None

    rig.clock.advance(RECONCILE_AFTER_S + 1)
    assert rig.dispatcher.reconcile() == {**nothing_done(), "resend": 1}
    row = rig.status(channel)
    assert (row.status, row.reason_code, row.attempts) == ("pending", "not_at_provider", 1)

    assert rig.dispatcher.dispatch(NUDGES[channel]) == "sent"
    assert rig.dispatcher.dispatch(NUDGES[channel]) is None
    [kept] = rig.stub.accepted
    row = rig.status(channel)
    assert (row.status, row.provider_message_id) == ("sent", kept.message_id)
    assert rig.sends(channel) == 1
    assert rig.posts() == 2  # the lost one and the one resend
    assert rig.events(channel) == [("ambiguous", "no_answer"), ("sent", None)]

    rig.clock.advance(RECONCILE_AFTER_S + 1)
    assert rig.dispatcher.reconcile() == nothing_done()
    assert rig.posts() == 2


@pytest.mark.parametrize("refusal", ["forbidden", "timeout"])
@CHANNELS
def test_a_lookup_the_provider_refuses_leaves_the_nudge_ambiguous(
    rig: Rig, channel: Channel, refusal: str
) -> None:
    send_without_answer(rig, channel)
    rig.clock.advance(RECONCILE_AFTER_S + 1)
    if refusal == "forbidden":  # SendGrid: the Email Activity API is a paid add-on
        body = (
            {"errors": [{"field": None, "message": "access forbidden"}]}
            if channel == "email"
            else {"code": 20003, "message": "Authenticate", "status": 403}
        )
        rig.stub.script(403, body=body)
    else:
        rig.stub.script(delay_s=LATE_S)

    with capture_logs() as logs:
        assert rig.dispatcher.reconcile() == {**nothing_done(), "unknown": 1}

    failed = [e for e in logs if e["event"] == "nudge.lookup_failed"]
    assert [e["nudge_id"] for e in failed] == [NUDGES[channel]]
    assert EMAIL not in str(logs) and PHONE not in str(logs)
    row = rig.status(channel)
    assert (row.status, row.reason_code) == ("ambiguous", "no_answer")
    assert rig.dispatcher.dispatch(NUDGES[channel]) is None
    assert rig.posts() == 1 and rig.sends(channel) == 1

    # Once the provider answers lookups again, the next round settles it.
    rig.clock.advance(30)
    assert rig.dispatcher.reconcile() == {**nothing_done(), "confirmed": 1}
    assert rig.status(channel).status == "sent"
    assert rig.posts() == 1 and rig.sends(channel) == 1


class Killed(BaseException):
    """The sender process dying: nothing after it runs, not even an ``except Exception``."""


class DyingSender:
    """Dies mid-call: after the provider took the message, or before it got it."""

    def __init__(self, real: Sender, after_sending: bool) -> None:
        self.real = real
        self.after_sending = after_sending
        self.provider = real.provider

    def send(self, message: OutgoingMessage) -> SendResult:
        if self.after_sending:
            self.real.send(message)
        raise Killed


@pytest.mark.parametrize("provider_has_it", [True, False], ids=["kept", "never-sent"])
@CHANNELS
def test_a_sender_killed_mid_call_leaves_a_claim_that_expires_and_is_reconciled(
    rig: Rig, channel: Channel, provider_has_it: bool
) -> None:
    claimed_at = rig.clock.now
    senders = real_senders(rig.stub.url)
    senders[channel] = DyingSender(senders[channel], provider_has_it)
    dying = make_dispatcher(rig.sessions, senders, rig.clock)
    with pytest.raises(Killed):
        dying.dispatch(NUDGES[channel])
    row = rig.status(channel)
    assert (row.status, row.sending_since) == ("sending", claimed_at)
    assert rig.sends(channel) == int(provider_has_it)

    # A new sender (the restarted process): the claim is not expired yet, so hands off.
    assert rig.dispatcher.dispatch(NUDGES[channel]) is None
    rig.clock.advance(LEASE_S - 1)
    assert rig.dispatcher.reconcile() == nothing_done()
    assert rig.status(channel).status == "sending"

    rig.clock.advance(2)
    assert rig.dispatcher.reconcile() == {**nothing_done(), "expired": 1}
    row = rig.status(channel)
    assert (row.status, row.reason_code) == ("ambiguous", "lease_expired")
    assert rig.dispatcher.dispatch(NUDGES[channel]) is None
    assert rig.lookups() == 0  # looked up only reconcile_after_s after the claim

    rig.clock.advance(RECONCILE_AFTER_S - LEASE_S)
    settled = "confirmed" if provider_has_it else "resend"
    assert rig.dispatcher.reconcile() == {**nothing_done(), settled: 1}
    if not provider_has_it:
        assert rig.dispatcher.dispatch(NUDGES[channel]) == "sent"

    row = rig.status(channel)
    [kept] = [s for s in rig.stub.accepted if s.key == KEYS[channel]]
    assert (row.status, row.provider_message_id) == ("sent", kept.message_id)
    assert rig.sends(channel) == 1
    assert rig.posts() == 1
    last = ("sent", "confirmed") if provider_has_it else ("sent", None)
    assert rig.events(channel) == [("ambiguous", "lease_expired"), last]
    assert rig.dispatcher.reconcile() == nothing_done()


@CHANNELS
def test_a_claim_whose_sender_died_before_calling_is_released_without_a_lookup(
    rig: Rig, channel: Channel
) -> None:
    """A sender claims a batch and dies before its first provider call: nothing can have gone,
    so after the lease the nudge is simply pending again, and sent once."""
    with rig.sessions.begin() as session:
        assert claim_nudges(session, [NUDGES[channel]], rig.clock.now) == {NUDGES[channel]}
    rig.clock.advance(LEASE_S + 1)
    assert rig.dispatcher.reconcile() == {**nothing_done(), "released": 1}
    row = rig.status(channel)
    assert (row.status, row.reason_code, row.in_call) == ("pending", "claim_expired", False)
    assert rig.lookups() == 0
    assert rig.dispatcher.dispatch(NUDGES[channel]) == "sent"
    assert rig.sends(channel) == 1 and rig.posts() == 1


class SlowFirstCall:
    """A sender whose first call outlives the lease: while it hangs, ``meanwhile`` runs."""

    def __init__(self, real: Sender, meanwhile: Callable[[], None]) -> None:
        self.real = real
        self.meanwhile = meanwhile
        self.provider = real.provider
        self.calls = 0

    def send(self, message: OutgoingMessage) -> SendResult:
        self.calls += 1
        result = self.real.send(message)
        if self.calls == 1:
            self.meanwhile()
        return result


def test_a_sender_whose_claim_expired_meanwhile_does_not_send_it_too(rig: Rig) -> None:
    """Sender A claims both nudges in one batch; its first call hangs past the lease and the
    reconcile delay, so sender B expires A's claim on the second nudge, finds nothing at the
    provider (A has not sent it yet) and sends it. A, reaching it, must leave it alone."""

    def other_sender_runs() -> None:
        rig.clock.advance(RECONCILE_AFTER_S + 1)
        counts = rig.dispatcher.reconcile()
        # The first nudge's call had begun: ambiguous, then found. The second was only
        # claimed: released at once, no lookup.
        assert counts == {**nothing_done(), "expired": 1, "released": 1, "confirmed": 1}
        assert rig.dispatcher.dispatch_pending() == 1

    senders = real_senders(rig.stub.url)
    senders["email"] = SlowFirstCall(senders["email"], other_sender_runs)
    first = make_dispatcher(rig.sessions, senders, rig.clock)

    with capture_logs() as logs:
        assert first.dispatch_pending() == 2

    assert rig.sends("email") == rig.sends("sms") == 1
    assert rig.posts() == 2
    assert [e["nudge_id"] for e in logs if e["event"] == "nudge.claim_lost"] == [NUDGES["sms"]]
    assert rig.status("email").status == rig.status("sms").status == "sent"


class Gate:
    """A sender that, once called, says so and waits for ``release`` before sending."""

    def __init__(self, real: TwilioSmsSender, calling: threading.Event, release: threading.Event):
        self.real = real
        self.calling = calling
        self.release = release
        self.provider = real.provider

    def send(self, message: OutgoingMessage) -> SendResult:
        self.calling.set()
        assert self.release.wait(10)
        return self.real.send(message)

    def find(self, message: OutgoingMessage, since: datetime) -> SendResult | None:
        return self.real.find(message, since)


def test_a_sender_whose_claim_was_taken_over_does_not_send_it_too(rig: Rig) -> None:
    """As above, but A reaches the second nudge while B holds it (claimed, calling the
    provider): the nudge is ``sending`` again, only not for A."""
    calling, release = threading.Event(), threading.Event()
    gated = real_senders(rig.stub.url)
    gated["sms"] = Gate(
        TwilioSmsSender(ACCOUNT_SID, "token", "+447700900000", rig.stub.url, TIMEOUT_S),
        calling,
        release,
    )
    second = make_dispatcher(rig.sessions, gated, rig.clock)
    running: list[threading.Thread] = []

    def other_sender_takes_over() -> None:
        rig.clock.advance(RECONCILE_AFTER_S + 1)
        counts = second.reconcile()
        # The first nudge's call had begun: ambiguous, then found. The second was only
        # claimed: released at once, no lookup.
        assert counts == {**nothing_done(), "expired": 1, "released": 1, "confirmed": 1}
        thread = threading.Thread(target=second.dispatch_pending)
        thread.start()
        running.append(thread)
        assert calling.wait(10)  # B has claimed the SMS and is calling Twilio

    senders = real_senders(rig.stub.url)
    senders["email"] = SlowFirstCall(senders["email"], other_sender_takes_over)
    first = make_dispatcher(rig.sessions, senders, rig.clock)
    try:
        first.dispatch_pending()
    finally:
        release.set()
        for thread in running:
            thread.join(10)

    assert rig.status("sms").status == "sent"
    assert rig.sends("sms") == 1  # fails today: 2, one from each sender


# --- replaying the whole topic ----------------------------------------------------------------

REPLAYED = 24
"""Nudges published for the replay test: half email, half SMS."""


def committed(bootstrap: str, group: str) -> dict[int, int]:
    """The group's committed offsets on the nudge.requested partitions."""
    admin = admin_client(bootstrap)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return {tp.partition: o.offset for tp, o in offsets.items() if tp.topic == NudgeRequested.topic}


def test_replaying_the_whole_topic_from_the_start_calls_no_provider_again(
    broker: EmbeddedBroker,
    stub: StubProviders,
    sessions: sessionmaker[Session],
    group_id: str,
) -> None:
    short_join = ConsumerSettings(session_timeout_ms=6_000)  # a short first join on Tansu
    now = datetime.now(UTC)
    run = uuid.uuid4().hex[:8]
    nudges: dict[str, str] = {}  # nudge id -> the stub's key for it
    with sessions.begin() as session:
        for i in range(REPLAYED):
            sid, phone = f"sup_{uuid.uuid4().hex}", f"+44792{i:07d}"
            channel: Channel = "sms" if i % 2 else "email"
            add_supporter(
                session,
                sid,
                email=f"r{i}@example.org",
                phone=phone,
                first_name=None,
                consent=[channel],
                consented_at=now - timedelta(days=1),
            )
            nudges[f"welcome:{sid}:{run}"] = phone if channel == "sms" else f"welcome:{sid}:{run}"
    ours: dict[int, int] = {}  # partition -> the last offset of our records
    producer = ledger_producer(broker.bootstrap)
    try:
        for nudge_id in nudges:
            event = NudgeRequested(
                event_time=now,
                nudge_id=nudge_id,
                supporter_id=nudge_id.split(":")[1],
                channel="sms" if nudges[nudge_id].startswith("+") else "email",
                template="welcome",
                rule="welcome",
                cause_event_id=uuid.uuid4(),
            )
            sent = producer.send(
                event.topic, key=event.key().encode(), value=event.model_dump_json().encode()
            ).get(30)
            ours[sent.partition] = max(ours.get(sent.partition, -1), sent.offset)
    finally:
        producer.close(timeout=5)

    def statuses() -> dict[str, str]:
        with sessions() as session:
            rows = session.execute(
                select(Nudge.nudge_id, Nudge.status).where(Nudge.nudge_id.in_(nudges))
            )
            return {nudge_id: status for nudge_id, status in rows}

    def dispatcher() -> Dispatcher:
        return make_dispatcher(sessions, real_senders(stub.url), Clock())

    # The real clock: Clock() only starts at the real time, and these run for seconds.
    first = Running(ConsumerWorker(broker.bootstrap, sessions, dispatcher(), group_id, short_join))
    try:
        wait_until("every nudge sent", lambda: set(statuses().values()) == {"sent"})
        wait_until(
            "the first group's offsets past our records",
            lambda: all(
                committed(broker.bootstrap, group_id).get(p, 0) > o for p, o in ours.items()
            ),
        )
    finally:
        first.stop()
    assert stub.sends_by_key() == Counter(nudges.values())
    calls_before = len(stub.requests)
    read_before = committed(broker.bootstrap, group_id)

    replay_group = f"{group_id}-replay"  # new: it starts at offset 0 of every partition
    assert committed(broker.bootstrap, replay_group) == {}
    with capture_logs() as logs:
        replayer = dispatcher()
        rounds = DispatchRounds(replayer)
        second = Running(
            ConsumerWorker(broker.bootstrap, sessions, replayer, replay_group, short_join)
        )
        try:
            wait_until(
                "the replay to re-read all the first group read",
                lambda: all(
                    committed(broker.bootstrap, replay_group).get(p, 0) >= o
                    for p, o in read_before.items()
                ),
            )
            # More rounds of the sender, which must find nothing: its reconcile round (made as
            # it starts, and every lease_s / 4 after) and send rounds begun after the re-read.
            seen = rounds.sends
            wait_until(
                "a reconcile round and three more send rounds",
                lambda: rounds.reconciles >= 1 and rounds.sends >= seen + 3,
            )
        finally:
            second.stop()

    assert len(stub.requests) == calls_before  # no send, no lookup
    assert stub.sends_by_key() == Counter(nudges.values())
    assert set(statuses().values()) == {"sent"}
    stored = [e for e in logs if e["event"] == "consumers.stored"]
    repeats = sum(e["repeats"] for e in stored)
    letters = sum(e["dead_letters"] for e in stored)  # other tests' bad records, again
    print(f"replay: {repeats} known, {letters} dead letters, up to offsets {read_before}")
    assert sum(e["nudges"] for e in stored) == 0  # every nudge re-read was known already
    # Offsets start at 0 and the broker never compacts: each record below them was re-read.
    assert repeats + letters >= sum(read_before.values()) >= REPLAYED
    assert not [e for e in logs if e["event"] == "nudge.dispatched"]
