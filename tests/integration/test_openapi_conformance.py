"""The OpenAPI document says what the web app does: property-based requests (schemathesis,
in process over ASGI) get no 5xx and only answers the document declares, and the document
carries the 404s of the opt-out links and the ingest bodies' contact patterns."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from argon2 import PasswordHasher
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

import engage.webapp
import engage.wiring
from consumers.organising import directory, passwords
from consumers.organising.accounts import start_session
from consumers.organising.web import CSRF_HEADER, SESSION_COOKIE
from consumers.repository import store_tasks
from infra.db import Nudge, Supporter, make_engine
from infra.settings import Settings
from schemas.events import (
    INGEST_EMAIL_PATTERN,
    INGEST_PHONE_PATTERN,
    INGEST_POSTCODE_PATTERN,
    TaskCreated,
)
from schemas.identity import opt_out_token
from tests.integration.test_dispatch import INVITE, WELCOME, seed

TOKEN = "test-token"  # the settings fixture's api_token
KEY = "test-key"  # and its identity_key, which signs the opt-out links
CODE = "k3v7q2m5xa"  # an SMS opt-out code
JO = f"sup_{1:032x}"  # a supporter in the organiser's district
OPERATIONS = [
    ("POST", "/v1/events"),
    ("POST", "/v1/events/batch"),
    ("GET", "/v1/supporters/{supporter_id}/explain"),
    ("GET", "/v1/admin/export/{supporter}"),
    ("POST", "/v1/admin/erase"),
    ("GET", "/unsubscribe/{nudge_id}"),
    ("POST", "/unsubscribe/{nudge_id}"),
    ("GET", "/o/{code}"),
    ("POST", "/o/{code}"),
    ("POST", "/webhooks/twilio/sms"),
    ("POST", "/webhooks/twilio/status"),
    ("POST", "/webhooks/sendgrid/events"),
    ("GET", "/health"),
    ("GET", "/asyncapi.json"),
    ("GET", "/schemas/{topic}.json"),
    ("POST", "/v1/organisers/session"),
    ("DELETE", "/v1/organisers/session"),
    ("GET", "/v1/organisers/queue"),
    ("GET", "/v1/organisers/tasks/{task_id}"),
    ("POST", "/v1/organisers/tasks/{task_id}/claim"),
    ("POST", "/v1/organisers/tasks/{task_id}/release"),
    ("POST", "/v1/organisers/tasks/{task_id}/outcome"),
    ("GET", "/v1/organisers/escalations"),
    ("GET", "/v1/organisers/groups/{group_id}/leaders"),
    ("POST", "/v1/organisers/trainings"),
]
UNCONSTRAINED = {  # no request to get wrong
    "/health",
    "/asyncapi.json",
    "/schemas/{topic}.json",
    "/v1/supporters/{supporter_id}/explain",
    "/v1/organisers/escalations",
}
ORGANISER_PASSWORD = "a long enough password"
CONFORMS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: what the document promises does not depend on the database."""
    return f"sqlite:///{tmp_path / 'engage.db'}"


@pytest.fixture(autouse=True)
def _quick_hashes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """argon2id with small parameters: the organiser's password is hashed for every test and
    checked at every generated sign-in, and the answers' shape does not depend on the cost
    (the app's own parameters: tests/unit/test_organiser_sign_in.py)."""
    monkeypatch.setattr(
        passwords, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
    passwords._dummy_hash.cache_clear()  # an unknown id's dummy hash: made with these too
    yield
    passwords._dummy_hash.cache_clear()


@pytest.fixture
def app(settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[FastAPI]:
    """``engage.webapp.create_app`` on the migrated test database; its engines disposed after."""
    engines: list[Engine] = []

    def recording_make_engine(url: str, **kwargs: Any) -> Engine:
        made = make_engine(url, **kwargs)
        engines.append(made)
        return made

    monkeypatch.setattr(engage.wiring, "make_engine", recording_make_engine)
    try:
        yield engage.webapp.create_app(settings)
    finally:
        for made in engines:
            made.dispose()


@pytest.fixture
def links(sessions: sessionmaker[Session]) -> dict[str, dict[str, Any]]:
    """A nudge of each channel in the database, and per link operation the path and query of
    its genuine link, which some generated requests follow to the 200 page."""
    seed(sessions)
    with sessions.begin() as session:
        invite = session.get(Nudge, INVITE)
        assert invite is not None
        invite.opt_out_code = CODE
    return {
        "/unsubscribe/{nudge_id}": {
            "path_parameters": {"nudge_id": WELCOME},
            "query": {"t": opt_out_token(KEY, WELCOME)},
        },
        "/o/{code}": {"path_parameters": {"code": CODE}},
        "/schemas/{topic}.json": {"path_parameters": {"topic": "supporter.signup"}},
    }


@pytest.fixture
def organiser(sessions: sessionmaker[Session]) -> dict[str, str]:
    """Asha, of a group owning Jo's district, signed in: her session cookie and CSRF token
    (sent with half the requests), and Jo's task, which some requests name."""
    now = datetime.now(UTC)
    with sessions.begin() as session:
        directory.add_group(session, "hackney", "Hackney", ["E8"], now)
        directory.add_organiser(session, "asha", "Asha", ["hackney"], now, leads=["hackney"])
        directory.set_password(session, "asha", ORGANISER_PASSWORD, now)
        session.add(Supporter(supporter_id=JO, first_name="Jo", postcode="E8 1AA"))
        session.flush()
        store_tasks(session, [_task(JO, now)], now)
        started = start_session(session, "asha", now, timedelta(hours=1))
    return {
        "token": started.token,
        "csrf": started.signed_in.csrf_token,
        "task_id": f"first_meeting_follow_up:{JO}",
    }


def _task(sid: str, now: datetime) -> TaskCreated:
    return TaskCreated(
        event_time=now,
        task_id=f"first_meeting_follow_up:{sid}",
        supporter_id=sid,
        kind="first_meeting_follow_up",
        reason="Came to a first meeting",
        due_at=now + timedelta(hours=48),
        area="Hackney",
        rule="first-meeting-follow-up",
        cause_event_id=uuid.uuid4(),
    )


@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [(method, path, GenerationMode.POSITIVE) for method, path in OPERATIONS]
    + [
        (method, path, GenerationMode.NEGATIVE)
        for method, path in OPERATIONS
        if path not in UNCONSTRAINED
    ],
)
def test_every_answer_is_one_the_document_declares(
    app: FastAPI,
    links: dict[str, dict[str, Any]],
    organiser: dict[str, str],
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    """Requests the document allows (positive) or forbids (negative), some along a genuine
    opt-out link, half with the right bearer token: no 5xx, and the status, content type,
    headers and body of every answer as the document declares them.

    The webhooks are included, but only their refusals are reached: the test app has no
    provider secrets and schemathesis cannot sign a request, so each answer is the documented
    403 (test_webhooks.py covers their signed requests). The organisers' endpoints get a
    signed-in organiser's cookie and CSRF token with the authorised half, some of them a
    genuine task or group, and the sign-in its genuine credentials now and then.
    Bounded: 10 examples an operation and mode, derandomised, so every run sends the same
    requests.
    """
    operation = schemathesis.openapi.from_asgi("/openapi.json", app)[path][method]
    # A '/' in a path parameter addresses another route (or none), not this operation.
    cases = operation.as_strategy(generation_mode=mode).filter(
        lambda case: not any("/" in str(v) for v in (case.path_parameters or {}).values())
    )
    genuine = {**links, **_organiser_links(organiser)}
    if path in genuine:
        cases = st.one_of(cases, operation.as_strategy(**genuine[path]))

    @settings(
        max_examples=10,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=cases, authorised=st.booleans())
    def conforms(case: Case[Any], authorised: bool) -> None:
        if authorised:  # else the bearer token schemathesis made up, if any: a 401
            case.headers["Authorization"] = f"Bearer {TOKEN}"
            if path.startswith("/v1/organisers/"):
                case.cookies = {**(case.cookies or {}), SESSION_COOKIE: organiser["token"]}
                case.headers[CSRF_HEADER] = organiser["csrf"]
        case.call_and_validate(checks=CONFORMS)

    conforms()


def _organiser_links(organiser: dict[str, str]) -> dict[str, dict[str, Any]]:
    task = {"path_parameters": {"task_id": organiser["task_id"]}}
    return {
        "/v1/organisers/session": {
            "body": {"organiser_id": "asha", "password": ORGANISER_PASSWORD},
            "media_type": "application/json",
        },
        "/v1/organisers/tasks/{task_id}": task,
        "/v1/organisers/tasks/{task_id}/claim": task,
        "/v1/organisers/tasks/{task_id}/release": task,
        "/v1/organisers/tasks/{task_id}/outcome": {
            **task,
            "body": {"outcome": "no_answer", "note": "left a message"},
            "media_type": "application/json",
        },
        "/v1/organisers/groups/{group_id}/leaders": {"path_parameters": {"group_id": "hackney"}},
        "/v1/organisers/trainings": {
            "body": {"supporter_id": JO, "training": "One-to-ones"},
            "media_type": "application/json",
        },
    }


def test_the_property_test_covers_every_operation(app: FastAPI) -> None:
    document = app.openapi()
    every = {(m.upper(), p) for p, methods in document["paths"].items() for m in methods}

    assert every == set(OPERATIONS)


# --- what the document says ------------------------------------------------------------------


def test_the_opt_out_links_document_their_404_page(app: FastAPI) -> None:
    paths = app.openapi()["paths"]

    for path in ("/unsubscribe/{nudge_id}", "/o/{code}"):
        for method in ("get", "post"):
            responses = paths[path][method]["responses"]
            assert "Link not recognised" in responses["404"]["description"]
            assert set(responses["404"]["content"]) == {"text/html"}
            assert set(responses["200"]["content"]) == {"text/html"}
    (code,) = paths["/o/{code}"]["get"]["parameters"]
    assert code["schema"]["pattern"] == "^[a-z2-7]{10}$"


def test_the_ingest_bodies_carry_the_contact_patterns_and_limits(app: FastAPI) -> None:
    document = app.openapi()
    schemas = document["components"]["schemas"]

    for name in ("SignupIn", "PetitionIn", "RSVPIn", "AttendedIn", "NoShowIn"):
        properties = schemas[name]["properties"]
        email, phone, postcode = (
            next(b for b in properties[field]["anyOf"] if b["type"] == "string")
            for field in ("email", "phone", "postcode")
        )
        assert email["pattern"] == INGEST_EMAIL_PATTERN
        assert email["format"] == "email"
        assert email["maxLength"] == 254
        assert phone["pattern"] == INGEST_PHONE_PATTERN
        assert postcode["pattern"] == INGEST_POSTCODE_PATTERN
        assert {"required": ["email"], "properties": {"email": {"type": "string"}}} in (
            schemas[name]["anyOf"]
        )
    for name in ("SignupIn", "OutcomeIn", "ConsentIn"):
        assert "type" in schemas[name]["required"]  # the discriminator's tag
        assert "Not before 2000-01-01" in schemas[name]["properties"]["event_time"]["description"]
    batch = document["paths"]["/v1/events/batch"]["post"]
    events = batch["requestBody"]["content"]["application/json"]["schema"]["properties"]["events"]
    assert events["maxItems"] == 1000  # the settings' max_batch
    for path in ("/v1/events", "/v1/events/batch"):
        post = document["paths"][path]["post"]
        assert {"202", "400", "401", "413", "422"} <= set(post["responses"])
        assert post["security"] == [{"HTTPBearer": []}]
