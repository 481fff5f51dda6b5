"""`engage erase` and POST /v1/admin/erase, on both databases: after erasing one person by
email, no table holds their email, phone, name or postcode; the others' rows are intact; their
addresses are suppressed; the audit row holds no personal data; a second erasure is a no-op;
and a replay of the ledger gives them no score, nudge or task."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from consumers.repository import store_nudges, store_scores, store_tasks, stored_outputs
from engage.cli import main
from engage.erasure import erase
from engage.wiring import engine_for
from infra.consent import suppressed
from infra.db import Base, Erasure, LedgerEvent, Nudge, OutboxMessage, Supporter
from infra.settings import Settings
from schemas.events import SupporterErased
from streams.replay import Stored, compare_with_stored, ledger_records, replay
from tests.factories import nudge_request
from tests.integration.people import (
    JO,
    JO_PHONE,
    SAM,
    People,
    follow_up_tasks,
    outbox_copy,
    post_outcome,
    post_people,
    scored,
    sent_to_outbox,
)
from tests.integration.test_ingest_api import KEY, TOKEN, WHEN

JO_TRACES = (JO, JO_PHONE, "Bloggs", "E2 7DJ", "Will come to the next meeting")


@pytest.fixture
def client(api: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=api, headers=headers, trust_env=False, timeout=30) as c:
        yield c


@pytest.fixture
def held(client: httpx.Client, sessions: sessionmaker[Session]) -> People:
    """Jo (an email, a phone merged in, a nudge sent to the outbox, a pending one, an open
    task and its outcome with notes, a score) and Sam (a signup, a nudge, a task, a score)."""
    people = post_people(
        client,
        sessions,
        jo={"last_name": "Bloggs"},
        sam={"first_name": "Samira", "postcode": "N1 9GU"},
    )
    jo, sam = people.jo, people.sam
    with sessions.begin() as session:
        store_nudges(
            session,
            [
                nudge_request(f"welcome:{jo}", jo, "email", WHEN),
                nudge_request(f"invite:{jo}", jo, "sms", WHEN, rule="invite"),
                nudge_request(f"welcome:{sam}", sam, "email", WHEN),
            ],
        )
        store_tasks(session, follow_up_tasks(people))
        sent_to_outbox(
            session,
            f"welcome:{jo}",
            JO,
            "Welcome, Jo Bloggs",
            f"Thanks for signing up. Reply to {JO}.",
        )
        session.add(
            outbox_copy(
                f"welcome:{sam}", SAM, "Welcome, Samira", f"Thanks for signing up. Reply to {SAM}."
            )
        )
        store_scores(session, [scored(sid) for sid in (jo, sam)])
    post_outcome(client, jo)
    return people


def every_row(sessions: sessionmaker[Session]) -> str:
    """Every row of every table, as text."""
    with sessions() as session:
        return "\n".join(
            repr(tuple(row))
            for table in Base.metadata.sorted_tables
            for row in session.execute(select(table)).all()
        )


def test_erasing_by_email_leaves_nothing_of_the_person_and_everything_of_the_others(
    held: People, sessions: sessionmaker[Session]
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
        assert session.get(Supporter, held.sam) is not None
        assert session.scalar(
            select(OutboxMessage.id).where(OutboxMessage.nudge_id == f"welcome:{held.sam}")
        )
        assert suppressed(session, KEY, [("email", JO), ("sms", JO_PHONE), ("email", SAM)]) == {
            ("email", JO),
            ("sms", JO_PHONE),
        }
        pending = session.get(Nudge, f"invite:{held.jo}")
        assert pending is not None and (pending.status, pending.reason) == ("cancelled", "erased")
        keyed = session.scalars(select(LedgerEvent).where(LedgerEvent.key == held.jo)).all()
        assert [row.topic for row in keyed] == [SupporterErased.topic]
        audit = session.scalars(select(Erasure)).one()
    assert audit.requested_by == "cli:organiser" and not audit.repeat
    audit_text = repr((audit.subject, audit.rows, audit.requested_by))
    for personal in (*JO_TRACES, held.jo, held.jo_phone):
        assert personal not in audit_text


def test_a_second_erasure_finds_nothing_and_says_so(
    held: People, sessions: sessionmaker[Session]
) -> None:
    """A repeat by their id is recognised (``already_erased``). Their email and phone lead to
    nobody any more: their links are gone, and ids are random, so nothing gives the id back."""
    first = erase(sessions, KEY, JO, "api")
    snapshot = every_row(sessions)

    again = erase(sessions, KEY, held.jo, "api")
    assert again is not None and again.already_erased and again.rows == {}
    for who in (JO, "07911 123456", "nobody@example.org"):
        assert erase(sessions, KEY, who, "api") is None, who

    assert first is not None
    with sessions() as session:
        audits = session.scalars(select(Erasure).order_by(Erasure.erased_at)).all()
        assert [a.repeat for a in audits] == [False, True]
        assert len({a.subject for a in audits}) == 1
        audits_text = repr([(a.subject, a.rows) for a in audits])
    after = every_row(sessions)
    assert after.count(held.jo) == snapshot.count(held.jo)  # the repeats changed nothing else
    assert held.jo not in audits_text
    for trace in JO_TRACES:
        assert trace not in after


def test_a_replay_of_the_ledger_after_erasure_gives_nothing_for_them(
    held: People, sessions: sessionmaker[Session]
) -> None:
    erase(sessions, KEY, JO, "api")

    result = replay(engine_for(), ledger_records(sessions), time.time())

    assert held.jo not in result.scores and held.jo_phone not in result.scores
    assert held.sam in result.scores
    assert not any(held.jo in key for key in result.nudge_ids | result.task_ids)
    with sessions() as session:
        stored = Stored(*stored_outputs(session))
    report = compare_with_stored(result, stored, 30.0)
    assert held.jo not in report["example_differences"]


def test_the_api_erases_refuses_and_answers_404(
    held: People, client: httpx.Client, api: str, sessions: sessionmaker[Session]
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
        assert session.get(Supporter, held.jo) is None
        assert session.scalars(select(Erasure.requested_by)).one() == "ops"


def erase_cli(*argv: str) -> tuple[int, str]:
    """``engage erase`` with its output. Not capsys: the CLI binds the logger to the stderr of
    the moment, which capsys closes at the end of the test."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["erase", *argv])
    return code, out.getvalue()


def test_the_cli_erases_and_prints_counts_only(
    held: People, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENGAGE_HOME", str(tmp_path))
    monkeypatch.setenv("ENGAGE_DATABASE_URL", settings.sqlalchemy_url)
    monkeypatch.setenv("ENGAGE_IDENTITY_KEY", KEY)
    monkeypatch.setenv("ENGAGE_API_TOKEN", TOKEN)

    code, printed = erase_cli(JO, "--by", "organiser")
    assert code == 0
    assert "supporters 2" in printed and JO not in printed and held.jo not in printed
    code, printed = erase_cli(held.jo, "--json")  # their address leads to nobody now
    assert code == 0 and '"already_erased": true' in printed
    assert erase_cli(JO)[0] == 1
    assert erase_cli("nobody@example.org")[0] == 1
    assert erase_cli("not an address")[0] == 2
