"""The ingest API under uvicorn on both databases: 202s, the ledger, clear 4xx that lose nothing."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from infra.db import ConsentRecord, LedgerEvent, Supporter
from schemas.identity import new_supporter_id
from tests.factories import id_of, ids_given_next

TOKEN = "test-token"
KEY = "test-key"
WHEN = (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0)


@pytest.fixture
def client(api: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    # Plain HTTP on loopback: verify=False spares building a TLS context (15 ms) per test.
    with httpx.Client(
        base_url=api, headers=headers, trust_env=False, timeout=30, verify=False
    ) as c:
        yield c


class _ErrorLogged(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.seen.set()


@contextlib.contextmanager
def server_error_logged() -> Iterator[threading.Event]:
    """An event set once the server has logged an exception; wait for it after a 5xx.

    The handler is added during the test's call, after the handlers pytest put on the root
    logger for it, so when it sees the record they have formatted its traceback. On Python
    3.11 that formatting calls ast.parse, and doing so in the server thread while pytest does
    in the main thread can raise SystemError inside pytest itself.
    """
    handler = _ErrorLogged()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler.seen
    finally:
        root.removeHandler(handler)


def signup(**fields: Any) -> dict[str, Any]:
    return {
        "type": "supporter.signup",
        "event_id": str(uuid.uuid4()),
        "event_time": WHEN.isoformat(),
        "email": "  Jo.Bloggs@Example.ORG ",
        "first_name": "Jo",
        "postcode": "e2 7dj",
        "area": "Tower Hamlets",
        "consent_email": True,
        "consent_wording": "2024-05",
        **fields,
    }


def petition(**fields: Any) -> dict[str, Any]:
    return {
        "type": "petition.signed",
        "event_id": str(uuid.uuid4()),
        "event_time": WHEN.isoformat(),
        "phone": "07911 123456",
        "petition_id": "clean-air",
        "petition_title": "Clean air for Bethnal Green",
        **fields,
    }


def rsvp(**fields: Any) -> dict[str, Any]:
    return {
        "type": "event.rsvp",
        "event_id": str(uuid.uuid4()),
        "event_time": WHEN.isoformat(),
        "email": "sam@example.org",
        "meeting_id": "m-1",
        "meeting_starts_at": (WHEN + timedelta(days=3)).isoformat(),
        **fields,
    }


def attended(**fields: Any) -> dict[str, Any]:
    return {
        "type": "event.attended",
        "event_id": str(uuid.uuid4()),
        "event_time": WHEN.isoformat(),
        "email": "sam@example.org",
        "meeting_id": "m-1",
        **fields,
    }


def no_show(**fields: Any) -> dict[str, Any]:
    return {
        "type": "event.no_show",
        "event_id": str(uuid.uuid4()),
        "event_time": WHEN.isoformat(),
        "email": "sam@example.org",
        "meeting_id": "m-1",
        **fields,
    }


def outcome(sid: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "task.outcome",
        "event_id": str(uuid.uuid4()),
        "event_time": WHEN.isoformat(),
        "supporter_id": sid,
        "task_id": f"call-new-signer:{sid}",
        "outcome": "positive",
        "notes": "Will come to the next meeting",
        **fields,
    }


def click(sid: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "email.clicked",
        "event_id": str(uuid.uuid4()),
        "event_time": WHEN.isoformat(),
        "supporter_id": sid,
        "nudge_id": f"welcome:{sid}",
        "url": "https://example.org/meetings",
        **fields,
    }


def consent(sid: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "consent.changed",
        "event_id": str(uuid.uuid4()),
        "event_time": WHEN.isoformat(),
        "supporter_id": sid,
        "channel": "email",
        "granted": False,
        "source": "organiser",
        **fields,
    }


def ledger(sessions: sessionmaker[Session]) -> dict[str, LedgerEvent]:
    with sessions() as session:
        return {str(row.event_id): row for row in session.scalars(select(LedgerEvent))}


def problem(response: httpx.Response) -> list[tuple[str, str]]:
    return [(d["field"], d["reason"]) for d in response.json()["detail"]]


def rejected(response: httpx.Response) -> dict[int, list[tuple[str, str]]]:
    return {
        r["index"]: [(e["field"], e["reason"]) for e in r["errors"]]
        for r in response.json()["rejected"]
    }


# --- accepted --------------------------------------------------------------------------------


def test_one_valid_event_is_committed_with_contact_and_consent(
    client: httpx.Client, sessions: sessionmaker[Session]
) -> None:
    event = signup()
    response = client.post("/v1/events", json=event)

    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": [event["event_id"]], "duplicates": [], "rejected": []}
    sid = id_of(sessions, KEY, email="jo.bloggs@example.org")
    (row,) = ledger(sessions).values()
    assert (str(row.event_id), row.topic, row.key, row.published) == (
        event["event_id"],
        "supporter.signup",
        sid,
        False,
    )
    payload = json.loads(row.payload)
    assert payload["supporter_id"] == sid
    # The event keeps the district; who the person is stays in the supporters table.
    assert (payload["district"], payload["area"]) == ("E2", "Tower Hamlets")
    assert not {"email", "phone", "first_name", "last_name", "postcode"} & set(payload)
    with sessions() as session:
        person = session.get(Supporter, sid)
        assert person is not None
        assert (person.email, person.first_name, person.postcode, person.area) == (
            "jo.bloggs@example.org",
            "Jo",
            "E2 7DJ",
            "Tower Hamlets",
        )
        consent = session.scalars(select(ConsentRecord)).all()
    assert [(c.supporter_id, c.channel, c.granted, c.wording_version) for c in consent] == [
        (sid, "email", True, "2024-05")
    ]
    assert consent[0].recorded_at == WHEN
    assert str(consent[0].event_id) == event["event_id"]


def test_a_valid_batch_of_every_type_is_committed(
    client: httpx.Client, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    jo, sam = ids_given_next(monkeypatch, 2)  # the by-id events name Jo, first seen in the batch
    events = [
        signup(consent_sms=True, phone="07911 123456"),
        petition(),
        rsvp(),
        attended(),
        no_show(),
        outcome(jo),
        click(jo),
        consent(jo),
    ]
    response = client.post("/v1/events/batch", json={"events": events})

    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == [e["event_id"] for e in events]
    rows = ledger(sessions)
    assert {k: r.topic for k, r in rows.items()} == {e["event_id"]: e["type"] for e in events}
    # The signup linked the phone to Jo, so the petition signed by phone alone is Jo's too.
    assert [rows[e["event_id"]].key for e in events] == [jo, jo, sam, sam, sam, jo, jo, jo]
    assert json.loads(rows[events[5]["event_id"]].payload)["outcome"] == "positive"
    with sessions() as session:
        people = {s.supporter_id: s for s in session.scalars(select(Supporter))}
        consent_rows = {
            (c.supporter_id, c.channel, c.granted, c.source)
            for c in session.scalars(select(ConsentRecord))
        }
    assert set(people) == {jo, sam}
    assert people[jo].phone == "+447911123456"
    assert id_of(sessions, KEY, email="jo.bloggs@example.org") == jo
    assert id_of(sessions, KEY, phone="07911 123456") == jo
    assert id_of(sessions, KEY, email="sam@example.org") == sam
    assert consent_rows == {
        (jo, "email", True, "signup"),
        (jo, "sms", True, "signup"),
        (jo, "email", False, "organiser"),
    }


def test_a_consent_change_is_recorded_as_consent_stamped_no_later_than_its_arrival(
    client: httpx.Client, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    (jo,) = ids_given_next(monkeypatch, 1)  # the signup in the same batch gives it
    ahead = (datetime.now(UTC) + timedelta(hours=6)).isoformat()  # a clock running ahead
    posted = [signup(), consent(jo, granted=True, channel="sms", event_time=ahead)]
    response = client.post("/v1/events/batch", json={"events": posted})

    assert response.status_code == 202, response.text
    with sessions() as session:
        (sms,) = session.scalars(select(ConsentRecord).where(ConsentRecord.channel == "sms"))
    assert (sms.supporter_id, sms.granted, sms.source) == (jo, True, "organiser")
    assert str(sms.event_id) == posted[1]["event_id"]
    assert sms.recorded_at <= datetime.now(UTC)
    assert sms.recorded_at < datetime.fromisoformat(ahead)


def test_a_repeated_event_id_is_reported_as_a_duplicate_and_stored_once(
    client: httpx.Client, sessions: sessionmaker[Session]
) -> None:
    event = signup()
    first = client.post("/v1/events", json=event)
    again = client.post("/v1/events", json=event)
    in_batch = client.post("/v1/events/batch", json={"events": [event, petition(), event]})

    assert first.status_code == again.status_code == in_batch.status_code == 202
    assert again.json() == {"accepted": [], "duplicates": [event["event_id"]], "rejected": []}
    assert in_batch.json()["duplicates"] == [event["event_id"], event["event_id"]]
    assert len(in_batch.json()["accepted"]) == 1
    rows = ledger(sessions)
    assert len(rows) == 2
    with sessions() as session:
        assert len(session.scalars(select(ConsentRecord)).all()) == 1


# --- refused, nothing valid lost -------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"{", b"not json", b'{"events": [}', b"\xff\xfe\x00", b""],
    ids=["unclosed", "words", "bad-array", "not-utf8", "empty"],
)
def test_malformed_json_is_400_naming_the_body(
    client: httpx.Client, sessions: sessionmaker[Session], body: bytes
) -> None:
    for path in ("/v1/events", "/v1/events/batch"):
        response = client.post(path, content=body, headers={"Content-Type": "application/json"})

        assert response.status_code == 400, path
        ((field, reason),) = problem(response)
        assert field == "body"
        assert reason.startswith("malformed JSON: ")
    assert ledger(sessions) == {}


def _without(event: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in names}


@pytest.mark.parametrize(
    ("bad", "field", "reason"),
    [
        (_without(signup(), "event_time"), "events[1].event_time", "Field required"),
        (_without(petition(), "petition_id"), "events[1].petition_id", "Field required"),
        (_without(attended(), "meeting_id"), "events[1].meeting_id", "Field required"),
        (_without(signup(), "email"), "events[1]", "an email or a phone is required"),
        (_without(signup(), "type"), "events[1].type", "Unable to extract tag"),
    ],
    ids=["event_time", "petition_id", "meeting_id", "no-identity", "type"],
)
def test_missing_fields_are_422_named_by_index_and_the_valid_events_are_kept(
    client: httpx.Client,
    sessions: sessionmaker[Session],
    bad: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    good = [signup(), rsvp()]
    response = client.post("/v1/events/batch", json={"events": [good[0], bad, good[1]]})

    assert response.status_code == 422
    assert response.json()["accepted"] == [e["event_id"] for e in good]
    errors = rejected(response)
    assert list(errors) == [1]
    assert [f for f, _ in errors[1]] == [field]
    assert reason in errors[1][0][1]
    assert set(ledger(sessions)) == {e["event_id"] for e in good}


FUTURE = (datetime.now(UTC) + timedelta(days=3)).isoformat()


@pytest.mark.parametrize(
    ("bad", "field", "reason"),
    [
        (signup(consent_email="maybe"), "consent_email", "valid boolean"),
        (signup(event_time="yesterday"), "event_time", "valid datetime"),
        (signup(event_time="2024-05-01T18:00:00"), "event_time", "timezone"),
        (signup(event_time=FUTURE), "event_time", "in the future"),
        (signup(event_id="not-a-uuid"), "event_id", "valid UUID"),
        (signup(email="jo.example.org"), "email", "@-sign"),
        (petition(phone="12345"), "phone", "not a valid phone number"),
        (signup(postcode="XYZ 123"), "postcode", "not a UK postcode"),
        (petition(petition_id=""), "petition_id", "at least 1 character"),
        (signup(first_name="x" * 101), "first_name", "at most 100 characters"),
        (signup(favourite_colour="red"), "favourite_colour", "Extra inputs are not permitted"),
        (rsvp(meeting_starts_at="soon"), "meeting_starts_at", "valid datetime"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None,
)
def test_wrong_values_are_422_naming_the_field_and_reason(
    client: httpx.Client,
    sessions: sessionmaker[Session],
    bad: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    single = client.post("/v1/events", json=bad)
    good = attended()
    batch = client.post("/v1/events/batch", json={"events": [good, bad]})

    assert single.status_code == batch.status_code == 422
    assert rejected(single) == {0: [(field, rejected(single)[0][0][1])]}
    assert reason in rejected(single)[0][0][1]
    assert [f for f, _ in rejected(batch)[1]] == [f"events[1].{field}"]
    assert batch.json()["accepted"] == [good["event_id"]]
    assert set(ledger(sessions)) == {good["event_id"]}


SOMEONE = "sup_" + "a" * 32


@pytest.mark.parametrize(
    ("bad", "field", "reason"),
    [
        (outcome(SOMEONE, outcome="great"), "outcome", "Input should be 'positive'"),
        (_without(outcome(SOMEONE), "task_id"), "task_id", "Field required"),
        (_without(click(SOMEONE), "nudge_id"), "nudge_id", "Field required"),
        (consent(SOMEONE, channel="fax"), "channel", "Input should be 'email' or 'sms'"),
        (consent(SOMEONE, granted="perhaps"), "granted", "valid boolean"),
        (_without(consent(SOMEONE), "source"), "source", "Field required"),
        (_without(click(SOMEONE), "supporter_id"), "supporter_id", "Field required"),
        (click("jo@example.org"), "supporter_id", "should match pattern"),
        # By-id events never derive an id from contact details: they may not carry any.
        (consent(SOMEONE, email="jo@example.org"), "email", "Extra inputs are not permitted"),
        (outcome(SOMEONE, phone="07911 123456"), "phone", "Extra inputs are not permitted"),
        (_without(no_show(), "meeting_id"), "meeting_id", "Field required"),
        (_without(no_show(), "email"), "", "an email or a phone is required"),
        (attended(role="guest"), "role", "Input should be 'attendee' or 'host'"),
        (attended(brought_by_email="jo.example.org"), "brought_by_email", "@-sign"),
        (attended(brought_by_phone="12345"), "brought_by_phone", "not a valid phone number"),
    ],
    ids=[
        "outcome-value",
        "outcome-task_id",
        "click-nudge_id",
        "consent-channel",
        "consent-granted",
        "consent-source",
        "click-no-supporter_id",
        "click-email-as-id",
        "consent-email",
        "outcome-phone",
        "no_show-meeting_id",
        "no_show-no-identity",
        "attended-role",
        "attended-brought_by_email",
        "attended-brought_by_phone",
    ],
)
def test_the_newer_event_types_are_422_naming_the_field_and_reason(
    client: httpx.Client,
    sessions: sessionmaker[Session],
    bad: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    good = attended()
    single = client.post("/v1/events", json=bad)
    batch = client.post("/v1/events/batch", json={"events": [good, bad]})

    assert single.status_code == batch.status_code == 422
    ((single_field, single_reason),) = rejected(single)[0]
    assert single_field == (field or "body")
    assert reason in single_reason
    assert [f for f, _ in rejected(batch)[1]] == [f"events[1].{field}" if field else "events[1]"]
    assert batch.json()["accepted"] == [good["event_id"]]
    assert set(ledger(sessions)) == {good["event_id"]}


def test_a_by_id_event_for_no_such_supporter_is_422_and_the_rest_is_kept(
    client: httpx.Client, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    (jo,) = ids_given_next(monkeypatch, 1)  # what Jo's signup will give: nobody's yet
    nobody = new_supporter_id()  # well formed, never seen
    single = client.post("/v1/events", json=click(jo))
    assert single.status_code == 422
    assert single.json() == {
        "accepted": [],
        "duplicates": [],
        "rejected": [
            {"index": 0, "errors": [{"field": "supporter_id", "reason": "no such supporter"}]}
        ],
    }

    # In a batch, a supporter first seen earlier in the same batch is known by then.
    events = [click(jo), signup(), outcome(jo), consent(nobody), signup(event_time="soon")]
    batch = client.post("/v1/events/batch", json={"events": events})

    assert batch.status_code == 422
    assert batch.json()["accepted"] == [events[1]["event_id"], events[2]["event_id"]]
    errors = rejected(batch)
    assert list(errors) == [0, 3, 4]
    assert errors[0] == [("events[0].supporter_id", "no such supporter")]
    assert errors[3] == [("events[3].supporter_id", "no such supporter")]
    assert set(ledger(sessions)) == {events[1]["event_id"], events[2]["event_id"]}
    assert id_of(sessions, KEY, email="jo.bloggs@example.org") == jo
    with sessions() as session:
        assert session.get(Supporter, nobody) is None
        assert session.scalars(select(ConsentRecord.granted)).all() == [True]


@pytest.mark.parametrize("kind", ["petition.unsigned", "", 7, None])
def test_an_unknown_event_type_is_422_on_the_type_field(
    client: httpx.Client, sessions: sessionmaker[Session], kind: object
) -> None:
    good = signup()
    single = client.post("/v1/events", json=signup(type=kind))
    batch = client.post("/v1/events/batch", json={"events": [signup(type=kind), good]})

    assert single.status_code == batch.status_code == 422
    assert [f for f, _ in rejected(single)[0]] == ["type"]
    ((field, reason),) = rejected(batch)[0]
    assert field == "events[0].type"
    assert "tag" in reason
    assert set(ledger(sessions)) == {good["event_id"]}


@pytest.mark.parametrize(
    ("body", "reason"),
    [([signup()], "a JSON object"), ({"events": "all"}, "list 'events'"), ({}, "list 'events'")],
    ids=["list", "string", "missing"],
)
def test_a_batch_that_is_not_an_object_with_a_list_is_422(
    client: httpx.Client, sessions: sessionmaker[Session], body: object, reason: str
) -> None:
    response = client.post("/v1/events/batch", json=body)

    assert response.status_code == 422
    ((field, text),) = problem(response)
    assert field == "events"
    assert reason in text
    assert ledger(sessions) == {}


def test_a_batch_of_more_than_max_batch_events_is_413(
    client: httpx.Client, sessions: sessionmaker[Session]
) -> None:
    events = [petition() for _ in range(1001)]
    response = client.post("/v1/events/batch", json={"events": events})

    assert response.status_code == 413
    assert problem(response) == [("events", "at most 1000 events a batch, got 1001")]
    assert ledger(sessions) == {}


def test_a_body_larger_than_the_limit_is_413(
    client: httpx.Client, sessions: sessionmaker[Session]
) -> None:
    body = json.dumps({"events": [signup(petition_title="x" * 4_100_000)]})
    response = client.post("/v1/events/batch", content=body)

    assert response.status_code == 413
    ((field, reason),) = problem(response)
    assert (field, reason) == ("body", f"larger than {1000 * 4096} bytes")
    assert ledger(sessions) == {}


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", "Basic dGVzdC10b2tlbg==", "test-token", "Bearer", "Bearer  x"],
    ids=["missing", "wrong", "basic", "no-scheme", "scheme-only", "two-spaces"],
)
def test_a_missing_or_wrong_token_is_401_and_records_nothing(
    api: str, sessions: sessionmaker[Session], authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    for path, body in (("/v1/events", signup()), ("/v1/events/batch", {"events": [signup()]})):
        response = httpx.post(api + path, json=body, headers=headers, trust_env=False)

        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert problem(response) == [("authorization", "a valid bearer token is required")]
    assert ledger(sessions) == {}


def test_the_token_scheme_is_case_insensitive(api: str, sessions: sessionmaker[Session]) -> None:
    event = signup()
    response = httpx.post(
        api + "/v1/events",
        json=event,
        headers={"Authorization": f"bearer {TOKEN}"},
        trust_env=False,
    )

    assert response.status_code == 202
    assert set(ledger(sessions)) == {event["event_id"]}


def test_a_non_ascii_token_is_401_not_a_server_error(
    api: str, sessions: sessionmaker[Session]
) -> None:
    with server_error_logged() as logged:
        response = httpx.post(
            api + "/v1/events",
            json=signup(),
            headers={"Authorization": b"Bearer t\xe9st-token"},
            trust_env=False,
        )
        if response.status_code >= 500:
            assert logged.wait(10)

    assert response.status_code == 401
    assert ledger(sessions) == {}


def test_deeply_nested_json_is_a_400_not_a_server_error(client: httpx.Client) -> None:
    with server_error_logged() as logged:
        response = client.post("/v1/events", content=b"[" * 100_000 + b"]" * 100_000)
        if response.status_code >= 500:
            assert logged.wait(10)

    assert response.status_code == 400
    assert problem(response)[0][0] == "body"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"email": 42}, "email"),
        ({"email": ["jo@example.org"]}, "email"),
        ({"phone": 7911123456}, "phone"),
        ({"postcode": 27}, "postcode"),
    ],
    ids=["email-int", "email-list", "phone-int", "postcode-int"],
)
def test_a_wrongly_typed_contact_field_is_rejected_not_dropped(
    client: httpx.Client, sessions: sessionmaker[Session], fields: dict[str, Any], field: str
) -> None:
    event = signup(**{"phone": "07911 123456", "email": "jo@example.org", **fields})
    response = client.post("/v1/events/batch", json={"events": [event]})

    assert response.status_code == 422
    assert [f for f, _ in rejected(response)[0]] == [f"events[0].{field}"]
    assert ledger(sessions) == {}


def test_an_unknown_key_with_a_dot_is_named(client: httpx.Client) -> None:
    response = client.post(
        "/v1/events/batch", json={"events": [signup(), signup(**{"utm.source": "x"})]}
    )

    assert response.status_code == 422
    assert [f for f, _ in rejected(response)[1]] == ["events[1].utm.source"]


# --- documentation ---------------------------------------------------------------------------


def test_openapi_documents_the_ingest_paths_and_the_event_schema(client: httpx.Client) -> None:
    response = client.get("/openapi.json")

    assert response.status_code == 200
    spec = response.json()
    assert {"/v1/events", "/v1/events/batch"} <= set(spec["paths"])
    single = spec["paths"]["/v1/events"]["post"]
    batch = spec["paths"]["/v1/events/batch"]["post"]
    assert single["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/IngestEvent"
    }
    batch_body = batch["requestBody"]["content"]["application/json"]["schema"]
    assert batch_body["required"] == ["events"]
    assert {"202", "400", "401", "413", "422"} <= set(single["responses"])
    schemas = spec["components"]["schemas"]
    ingest = schemas["IngestEvent"]
    assert ingest["discriminator"]["propertyName"] == "type"
    mapping = ingest["discriminator"]["mapping"]
    by_contact = {"supporter.signup", "petition.signed", "event.rsvp", "event.attended"}
    by_id = {"task.outcome", "email.clicked", "consent.changed", "training.completed"}
    assert set(mapping) == by_contact | by_id | {"event.no_show"}
    for kind, ref in mapping.items():
        properties = set(schemas[ref.rsplit("/", 1)[-1]]["properties"])
        assert {"event_id", "event_time"} <= properties
        if kind in by_id:
            assert "supporter_id" in properties
            assert not {"email", "phone"} & properties
        else:
            assert {"email", "phone"} <= properties
    assert {"role", "brought_by_email", "brought_by_phone"} <= set(
        schemas["AttendedIn"]["properties"]
    )
    assert "consent_email" in schemas["SignupIn"]["properties"]
    assert "petition_id" in schemas["PetitionIn"]["required"]
    assert batch_body["properties"]["events"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/IngestEvent"},
        "maxItems": 1000,  # the settings' max_batch
    }


def test_the_docs_page_answers(client: httpx.Client) -> None:
    response = client.get("/docs")

    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    assert "/openapi.json" in response.text


def test_the_docs_page_loads_its_assets_from_the_api_itself(client: httpx.Client) -> None:
    """A laptop offline still gets working docs: no CDN in the page, every asset served."""
    import re

    page = client.get("/docs").text
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page)
    assert assets, page
    for asset in assets:
        assert asset.startswith("/"), f"{asset} is not served by the API"
        assert client.get(asset).status_code == 200


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (b'{"type": "supporter.signup", "phone": ' + b"9" * 5000 + b"}", "body", "malformed"),
        (
            json.dumps(signup(first_name="Jo\u0000")).encode(),
            "body",
            "NUL characters",
        ),
    ],
    ids=["huge-integer", "nul-character"],
)
def test_input_python_cannot_hold_is_a_400_naming_the_reason(
    client: httpx.Client, body: bytes, field: str, reason: str
) -> None:
    response = client.post("/v1/events", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    (problem,) = response.json()["detail"]
    assert problem["field"] == field
    assert reason in problem["reason"]


def test_an_event_time_before_2000_is_rejected_not_a_server_error(client: httpx.Client) -> None:
    response = client.post(
        "/v1/events/batch",
        json={"events": [signup(event_time="0001-01-01T00:00:00+01:00"), signup()]},
    )
    assert response.status_code == 422, response.text
    result = response.json()
    assert result["rejected"] == [
        {"index": 0, "errors": [{"field": "events[0].event_time", "reason": "before 2000"}]}
    ]
    assert len(result["accepted"]) == 1
