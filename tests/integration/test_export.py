"""`engage export` and GET /v1/admin/export/{supporter}: a subject access request's document,
on both databases: the same person by email, phone or id; all of theirs; nothing of anyone
else's; and the JSON Schema committed in docs/ is the model's and validates the document."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import jsonschema_rs
import pytest
from sqlalchemy.orm import Session, sessionmaker

from consumers.repository import store_nudges, store_scores, store_tasks
from engage.cli import main
from engage.export import SubjectAccessExport, export_json_schema, subject_access_export
from engage.wiring import engine_for
from infra.consent import suppress
from infra.settings import Settings
from schemas.identity import new_supporter_id
from tests.factories import nudge_request
from tests.integration.people import (
    JO,
    JO_PHONE,
    SAM,
    SAM_PHONE,
    People,
    follow_up_tasks,
    post_outcome,
    post_people,
    scored,
    sent_to_outbox,
)
from tests.integration.test_ingest_api import KEY, TOKEN, WHEN, consent

SCHEMA = Path(__file__).parents[2] / "docs" / "export.schema.json"
NOW = WHEN + timedelta(hours=1)


@pytest.fixture
def client(api: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=api, headers=headers, trust_env=False, timeout=30) as c:
        yield c


@pytest.fixture
def held(client: httpx.Client, sessions: sessionmaker[Session]) -> People:
    """Jo: a signup by email (email consent), a petition by phone (another id, merged into
    Jo's when an RSVP gives both), SMS consent, a nudge sent to the local outbox, a
    suppression of the email, a task and its outcome, a stored score. Sam: a signup, a nudge
    and a task of their own."""
    people = post_people(
        client,
        sessions,
        sam={"phone": SAM_PHONE, "first_name": "Samira", "consent_wording": "sam-wording"},
    )
    jo, sam = people.jo, people.sam
    sms = consent(jo, channel="sms", granted=True, source="form", wording_version="sms-2024-06")
    answer = client.post("/v1/events", json=sms)  # by Jo's id, known once given
    assert answer.status_code == 202, answer.text
    with sessions.begin() as session:
        store_nudges(
            session,
            [
                nudge_request(f"welcome:{jo}", jo, "email", WHEN),
                nudge_request(f"welcome:{sam}", sam, "email", WHEN),
            ],
        )
        store_tasks(session, follow_up_tasks(people))
        sent_to_outbox(session, f"welcome:{jo}", JO, "Welcome, Jo", "Thanks for signing up.")
        suppress(session, KEY, "email", JO, "unsubscribed", "unsubscribe_link", WHEN)
        suppress(session, KEY, "email", SAM, "bounced", "sendgrid", WHEN)
        store_scores(session, [scored(jo)])
    post_outcome(client, jo)
    return people


def export(sessions: sessionmaker[Session], who: str) -> SubjectAccessExport:
    document = subject_access_export(sessions, engine_for(), KEY, who, NOW)
    assert document is not None, who
    return document


def test_by_email_phone_or_either_id_the_document_is_the_same(
    held: People, sessions: sessionmaker[Session]
) -> None:
    by_email = export(sessions, "  Jo.Bloggs@Example.ORG ")

    assert by_email.supporter_id == held.jo
    for who in (JO, JO_PHONE, "07911 123456", held.jo, held.jo_phone):
        assert export(sessions, who) == by_email, who


def test_the_document_holds_their_details_events_consent_nudges_and_tasks(
    held: People, sessions: sessionmaker[Session]
) -> None:
    document = export(sessions, JO)

    assert document.contact is not None
    assert (document.contact.email, document.contact.phone) == (JO, JO_PHONE)
    assert document.contact.postcode == "E2 7DJ"
    assert [m.supporter_id for m in document.merged_ids] == [held.jo_phone]
    assert sorted(link.kind for link in document.identity_links) == ["email", "phone"]
    assert {(c.channel, c.granted, c.source, c.wording_version) for c in document.consents} == {
        ("email", True, "signup", "2024-05"),
        ("sms", True, "form", "sms-2024-06"),
    }
    assert [(s.channel, s.reason) for s in document.suppressions] == [("email", "unsubscribed")]
    topics = [e.topic for e in document.events]
    for topic in ("supporter.signup", "petition.signed", "event.rsvp", "task.outcome"):
        assert topic in topics
    assert {e.supporter_id for e in document.events} == {held.jo, held.jo_phone}
    petition_event = next(e for e in document.events if e.topic == "petition.signed")
    assert petition_event.payload["petition_id"] == "clean-air"
    (nudge,) = document.nudges
    assert (nudge.nudge_id, nudge.status) == (f"welcome:{held.jo}", "sent")
    assert nudge.message is not None and nudge.message.subject == "Welcome, Jo"
    (task,) = document.tasks
    assert task.task_id == f"call-new-signer:{held.jo}"
    assert [o.outcome for o in task.outcomes] == ["positive"]
    assert document.score is not None and document.score.rung == "signer"
    assert document.explanation is not None
    assert document.explanation["supporter_id"] == held.jo
    assert document.rung_history
    assert document.rung_history[-1].rung == document.explanation["rung"]


def test_the_document_holds_nothing_about_anyone_else(
    held: People, sessions: sessionmaker[Session]
) -> None:
    text = export(sessions, JO_PHONE).model_dump_json()

    for theirs in (SAM, SAM_PHONE, held.sam, "Samira", "sam-wording", "call:sam", "bounced"):
        assert theirs not in text
    sam = export(sessions, SAM).model_dump_json()
    for jos in (JO, JO_PHONE, held.jo, held.jo_phone, "clean-air", "2024-05", "unsubscribed"):
        assert jos not in sam


@pytest.mark.usefixtures("held")
def test_the_json_validates_against_the_schema_and_parses_back_equal(
    sessions: sessionmaker[Session],
) -> None:
    document = export(sessions, JO)
    text = document.model_dump_json(indent=2)

    jsonschema_rs.validator_for(json.loads(SCHEMA.read_text())).validate(json.loads(text))
    assert SubjectAccessExport.model_validate_json(text) == document


def test_the_committed_schema_is_the_models(database_url: str) -> None:
    """Regenerate with `python -m engage.export > docs/export.schema.json`."""
    assert json.loads(SCHEMA.read_text()) == export_json_schema()


def test_nobody_matching_gives_none(sessions: sessionmaker[Session]) -> None:
    for who in ("nobody@example.org", "+447911123499", new_supporter_id(), "x"):
        assert subject_access_export(sessions, engine_for(), KEY, who, NOW) is None


def test_the_api_answers_the_token_holder_and_404s_for_nobody(
    held: People, client: httpx.Client
) -> None:
    answer = client.get(f"/v1/admin/export/{JO_PHONE}")
    assert answer.status_code == 200, answer.text
    document = SubjectAccessExport.model_validate(answer.json())
    assert document.supporter_id == held.jo
    assert {n.nudge_id for n in document.nudges} == {f"welcome:{held.jo}"}

    assert client.get("/v1/admin/export/nobody@example.org").status_code == 404
    refused = client.get(f"/v1/admin/export/{JO}", headers={"Authorization": "Bearer wrong"})
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == "Bearer"


def test_the_cli_writes_the_document(
    held: People, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENGAGE_HOME", str(tmp_path))
    monkeypatch.setenv("ENGAGE_DATABASE_URL", settings.sqlalchemy_url)
    monkeypatch.setenv("ENGAGE_IDENTITY_KEY", KEY)
    monkeypatch.setenv("ENGAGE_API_TOKEN", TOKEN)
    out = tmp_path / "jo.json"

    assert main(["export", held.jo, "--out", str(out)]) == 0
    document = SubjectAccessExport.model_validate_json(out.read_text())
    assert document.supporter_id == held.jo
    assert document.contact is not None and document.contact.email == JO
    assert main(["export", "nobody@example.org"]) == 1
