"""The OpenAPI document says what the web app does: property-based requests (schemathesis,
in process over ASGI) get no 5xx and only answers the document declares, and the document
carries the 404s of the opt-out links and the ingest bodies' contact patterns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
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
from infra.db import Nudge, make_engine
from infra.settings import Settings
from schemas.events import INGEST_EMAIL_PATTERN, INGEST_PHONE_PATTERN, INGEST_POSTCODE_PATTERN
from schemas.identity import opt_out_token
from tests.integration.test_dispatch import INVITE, WELCOME, seed

TOKEN = "test-token"  # the settings fixture's api_token
KEY = "test-key"  # and its identity_key, which signs the opt-out links
CODE = "k3v7q2m5xa"  # an SMS opt-out code
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
]
UNCONSTRAINED = {"/health", "/v1/supporters/{supporter_id}/explain"}  # no request to get wrong
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
    }


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
    app: FastAPI, links: dict[str, dict[str, Any]], method: str, path: str, mode: GenerationMode
) -> None:
    """Requests the document allows (positive) or forbids (negative), some along a genuine
    opt-out link, half with the right bearer token: no 5xx, and the status, content type,
    headers and body of every answer as the document declares them.

    The webhooks are included, but only their refusals are reached: the test app has no
    provider secrets and schemathesis cannot sign a request, so each answer is the documented
    403 (test_webhooks.py covers their signed requests). Bounded: 20 examples an operation
    and mode, derandomised, so every run sends the same requests.
    """
    operation = schemathesis.openapi.from_asgi("/openapi.json", app)[path][method]
    # A '/' in a path parameter addresses another route (or none), not this operation.
    cases = operation.as_strategy(generation_mode=mode).filter(
        lambda case: not any("/" in str(v) for v in (case.path_parameters or {}).values())
    )
    if path in links:
        cases = st.one_of(cases, operation.as_strategy(**links[path]))

    @settings(
        max_examples=20,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=cases, authorised=st.booleans())
    def conforms(case: Case[Any], authorised: bool) -> None:
        if authorised:  # else the bearer token schemathesis made up, if any: a 401
            case.headers["Authorization"] = f"Bearer {TOKEN}"
        case.call_and_validate(checks=CONFORMS)

    conforms()


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
