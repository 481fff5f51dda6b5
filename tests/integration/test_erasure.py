"""`engage erase` and POST /v1/admin/erase, on both databases: after erasing one person by
email, no table holds their email, phone, name or postcode; the others' rows are intact; their
addresses are suppressed; the audit row holds no personal data; a second erasure is a no-op;
and a replay of the ledger gives them no score, nudge or task."""

from __future__ import annotations

import contextlib
import io
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from consumers.repository import store_nudges, store_scores, store_tasks, stored_outputs
from engage.cli import main
from engage.erasure import erase
from engage.wiring import engine_for
from infra.consent import contact_key, suppressed
from infra.db import Base, Erasure, LedgerEvent, Nudge, OutboxMessage, Supporter
from infra.settings import Settings
from schemas.events import EngagementScored, SupporterErased, TaskCreated
from schemas.identity import supporter_id
from streams.replay import Stored, compare_with_stored, ledger_records, replay
from tests.factories import nudge_request
from tests.integration.test_ingest_api import KEY, TOKEN, WHEN, outcome, petition, rsvp, signup

JO = "jo.bloggs@example.org"
JO_PHONE = "+447911123456"
JO_ID = supporter_id(KEY, JO, None)
PHONE_ID = supporter_id(KEY, None, JO_PHONE)  # merged into JO_ID by the RSVP giving both
SAM = "sam.other@example.org"
SAM_ID = supporter_id(KEY, SAM, None)
JO_TRACES = (JO, JO_PHONE, "Bloggs", "E2 7DJ", "Will come to the next meeting")


@pytest.fixture
def client(api: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=api, headers=headers, trust_env=False, timeout=30) as c:
        yield c


@pytest.fixture
def held(client: httpx.Client, sessions: sessionmaker[Session]) -> None:
    """Jo (an email, a phone merged in, a nudge sent to the outbox, a pending one, an open
    task and its outcome with notes, a score) and Sam (a signup, a nudge, a task, a score)."""
    posted = [
        signup(last_name="Bloggs"),
        petition(),
        rsvp(email=JO, phone="07911 123456", meeting_id="m-1"),
        signup(email=SAM, first_name="Samira", postcode="N1 9GU"),
    ]
    answer = client.post("/v1/events/batch", json={"events": posted})
    assert answer.status_code == 202, answer.text
    task = TaskCreated(
        event_time=WHEN,
        task_id=f"call-new-signer:{JO_ID}",
        supporter_id=JO_ID,
        kind="call",
        reason="new signer",
        due_at=WHEN + timedelta(days=2),
        rule="call-new-signer",
        cause_event_id=uuid.uuid4(),
    )
    with sessions.begin() as session:
        store_nudges(
            session,
            [
                nudge_request(f"welcome:{JO_ID}", JO_ID, "email", WHEN),
                nudge_request(f"invite:{JO_ID}", JO_ID, "sms", WHEN, rule="invite"),
                nudge_request(f"welcome:{SAM_ID}", SAM_ID, "email", WHEN),
            ],
        )
        store_tasks(
            session,
            [task, task.model_copy(update={"task_id": "call:sam", "supporter_id": SAM_ID})],
        )
        sent = session.get(Nudge, f"welcome:{JO_ID}")
        assert sent is not None
        sent.status, sent.sent_at, sent.provider = "sent", WHEN, "outbox"
        sent.recipient = contact_key(KEY, "email", JO)
        for nudge_id, to in ((f"welcome:{JO_ID}", JO), (f"welcome:{SAM_ID}", SAM)):
            session.add(
                OutboxMessage(
                    nudge_id=nudge_id,
                    channel="email",
                    to_address=to,
                    subject="Welcome, Jo Bloggs" if to == JO else "Welcome, Samira",
                    body=f"Thanks for signing up. Reply to {to}.",
                    created_at=WHEN,
                )
            )
        store_scores(
            session,
            [
                EngagementScored(
                    event_time=WHEN,
                    supporter_id=sid,
                    score=3.5,
                    rung="signer",
                    cause_event_id=uuid.uuid4(),
                    half_life_days=30,
                )
                for sid in (JO_ID, SAM_ID)
            ],
        )
    answer = client.post("/v1/events", json=outcome(JO_ID))
    assert answer.status_code == 202, answer.text


def every_row(sessions: sessionmaker[Session]) -> str:
    """Every row of every table, as text."""
    with sessions() as session:
        return "\n".join(
            repr(tuple(row))
            for table in Base.metadata.sorted_tables
            for row in session.execute(select(table)).all()
        )


@pytest.mark.usefixtures("held")
def test_erasing_by_email_leaves_nothing_of_the_person_and_everything_of_the_others(
    sessions: sessionmaker[Session],
) -> None:
    before = every_row(sessions)
    assert all(trace in before for trace in JO_TRACES)  # the scan would see them

    result = erase(sessions, KEY, "  Jo.Bloggs@Example.ORG ", "cli:organiser")

    assert result is not None and not result.already_erased
    rows = result.rows
    assert rows["supporters"] == 2 and rows["identity_links"] == 2  # the email's id and the phone's
    assert rows["supporter_aliases"] == 1 and rows["ledger"] >= 4
    assert rows["outbox"] == 1 and rows["nudges"] == 1 and rows["tasks"] == 1
    assert rows["supporter_scores"] == 1 and rows["suppressions"] == 2
    after = every_row(sessions)
    for trace in JO_TRACES:
        assert trace not in after, trace
    assert SAM in after and "Samira" in after and "N1 9GU" in after
    with sessions() as session:
        assert session.get(Supporter, SAM_ID) is not None
        assert session.scalar(
            select(OutboxMessage.id).where(OutboxMessage.nudge_id == f"welcome:{SAM_ID}")
        )
        assert suppressed(session, KEY, [("email", JO), ("sms", JO_PHONE), ("email", SAM)]) == {
            ("email", JO),
            ("sms", JO_PHONE),
        }
        pending = session.get(Nudge, f"invite:{JO_ID}")
        assert pending is not None and (pending.status, pending.reason) == ("cancelled", "erased")
        keyed = session.scalars(select(LedgerEvent).where(LedgerEvent.key == JO_ID)).all()
        assert [row.topic for row in keyed] == [SupporterErased.topic]
        audit = session.scalars(select(Erasure)).one()
    assert audit.requested_by == "cli:organiser" and not audit.repeat
    audit_text = repr((audit.subject, audit.rows, audit.requested_by))
    for personal in (*JO_TRACES, JO_ID, PHONE_ID):
        assert personal not in audit_text


@pytest.mark.usefixtures("held")
def test_a_second_erasure_finds_nothing_and_says_so(sessions: sessionmaker[Session]) -> None:
    first = erase(sessions, KEY, JO, "api")
    snapshot = every_row(sessions)

    for who in (JO, JO_ID):
        again = erase(sessions, KEY, who, "api")
        assert again is not None and again.already_erased and again.rows == {}
    assert erase(sessions, KEY, "nobody@example.org", "api") is None

    assert first is not None
    with sessions() as session:
        audits = session.scalars(select(Erasure).order_by(Erasure.erased_at)).all()
        assert [a.repeat for a in audits] == [False, True, True]
        assert len({a.subject for a in audits}) == 1
        audits_text = repr([(a.subject, a.rows) for a in audits])
    after = every_row(sessions)
    assert after.count(JO_ID) == snapshot.count(JO_ID)  # the repeats changed nothing else
    assert JO_ID not in audits_text
    for trace in JO_TRACES:
        assert trace not in after


@pytest.mark.usefixtures("held")
def test_a_replay_of_the_ledger_after_erasure_gives_nothing_for_them(
    sessions: sessionmaker[Session],
) -> None:
    erase(sessions, KEY, JO, "api")

    result = replay(engine_for(), ledger_records(sessions), time.time())

    assert JO_ID not in result.scores and PHONE_ID not in result.scores
    assert SAM_ID in result.scores
    assert not any(JO_ID in key for key in result.nudge_ids | result.task_ids)
    with sessions() as session:
        stored = Stored(*stored_outputs(session))
    report = compare_with_stored(result, stored, 30.0)
    assert JO_ID not in report["example_differences"]


def test_the_api_erases_refuses_and_answers_404(
    held: None, client: httpx.Client, api: str, sessions: sessionmaker[Session]
) -> None:
    with httpx.Client(base_url=api, trust_env=False, timeout=30) as anonymous:
        assert anonymous.post("/v1/admin/erase", json={"supporter": JO}).status_code == 401
    assert client.post("/v1/admin/erase", json={"supporter": "not an address"}).status_code == 422
    assert client.post("/v1/admin/erase", json={"who": JO}).status_code == 422
    missing = client.post("/v1/admin/erase", json={"supporter": "nobody@example.org"})
    assert missing.status_code == 404 and missing.json()["detail"][0]["reason"] == "nobody matches"

    answer = client.post("/v1/admin/erase", json={"supporter": "07911 123456", "by": "ops"})

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["already_erased"] is False and body["rows"]["supporters"] == 2
    for trace in JO_TRACES:
        assert trace not in answer.text
    with sessions() as session:
        assert session.get(Supporter, JO_ID) is None
        assert session.scalars(select(Erasure.requested_by)).one() == "ops"


def erase_cli(*argv: str) -> tuple[int, str]:
    """``engage erase`` with its output. Not capsys: the CLI binds the logger to the stderr of
    the moment, which capsys closes at the end of the test."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["erase", *argv])
    return code, out.getvalue()


@pytest.mark.usefixtures("held")
def test_the_cli_erases_and_prints_counts_only(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENGAGE_HOME", str(tmp_path))
    monkeypatch.setenv("ENGAGE_DATABASE_URL", settings.sqlalchemy_url)
    monkeypatch.setenv("ENGAGE_IDENTITY_KEY", KEY)
    monkeypatch.setenv("ENGAGE_API_TOKEN", TOKEN)

    code, printed = erase_cli(JO, "--by", "organiser")
    assert code == 0
    assert "supporters 2" in printed and JO not in printed and JO_ID not in printed
    code, printed = erase_cli(JO, "--json")
    assert code == 0 and '"already_erased": true' in printed
    assert erase_cli("nobody@example.org")[0] == 1
    assert erase_cli("not an address")[0] == 2
