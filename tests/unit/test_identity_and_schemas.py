"""Identity normalisation, supporter ids (random, and the legacy keyed one), and the topic models'
schemas and checks."""

from __future__ import annotations

import json
import random
import re
import uuid
from datetime import UTC, datetime
from typing import Any, get_args

import pytest
from pydantic import TypeAdapter, ValidationError

from schemas.catalogue import ANALYTICS_TOPICS, INPUT_TOPICS, TOPICS, topic_spec
from schemas.events import (
    CONTACT_FIELDS,
    EVENT_TYPES,
    INGEST_TO_TOPIC,
    LEGACY_CONTACT_FIELDS,
    EventAttended,
    PetitionIn,
    SignupIn,
    SupporterId,
    SupporterSignup,
    event_model,
)
from schemas.identity import (
    contact_identity,
    legacy_supporter_id,
    new_supporter_id,
    normalise_email,
    normalise_phone,
)

WHEN = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
SID = "sup_" + "c" * 32


# --- normalisation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("jo@example.org", "jo@example.org"),
        ("Jo.Bloggs@Example.ORG", "jo.bloggs@example.org"),
        ("  JO@EXAMPLE.ORG\t", "jo@example.org"),
        ("\njo+news@example.co.uk ", "jo+news@example.co.uk"),
    ],
)
def test_emails_are_trimmed_and_lower_cased(raw: str, expected: str) -> None:
    assert normalise_email(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("jo.example.org", "@-sign"),
        ("jo@", "after the @-sign"),
        ("@example.org", "before the @-sign"),
        ("jo@example", "period"),
        ("jo@example..org", "two periods"),
        ("jo bloggs@example.org", "invalid characters"),
        ("", "@-sign"),
    ],
)
def test_invalid_emails_raise_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        normalise_email(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "07911 123456",
        "07911123456",
        "+44 7911 123456",
        "+447911123456",
        "0044 7911 123456",
        "(07911) 123-456",
        "+44 (0)7911 123456",
        " 07911-123-456 ",
    ],
)
def test_uk_mobile_formats_become_e164(raw: str) -> None:
    assert normalise_phone(raw) == "+447911123456"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("020 7946 0018", "+442079460018"),
        ("0161 496 0000", "+441614960000"),
        ("+1 202 555 0143", "+12025550143"),
    ],
)
def test_landlines_and_foreign_numbers_become_e164(raw: str, expected: str) -> None:
    assert normalise_phone(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("12345", "not a valid phone number"),
        ("07911 12345", "not a valid phone number"),
        ("+44 20", "not a valid phone number"),
        ("hello", "not a phone number"),
        ("", "not a phone number"),
    ],
)
def test_invalid_phones_raise_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(ValueError, match=f"^{reason}"):
        normalise_phone(raw)


# --- supporter ids ----------------------------------------------------------------------------

SUPPORTER_ID: TypeAdapter[str] = TypeAdapter(SupporterId)


def test_a_new_supporter_id_has_the_supporter_id_shape() -> None:
    sid = new_supporter_id()

    assert re.fullmatch(r"sup_[0-9a-f]{32}", sid)
    assert SUPPORTER_ID.validate_python(sid) == sid  # what every topic model accepts


def test_new_supporter_ids_differ_from_call_to_call() -> None:
    ids = [new_supporter_id() for _ in range(1000)]

    assert ids[0] != ids[1]
    assert len(set(ids)) == len(ids)


def test_a_seeded_rng_repeats_its_ids_and_another_seed_does_not() -> None:
    first = [new_supporter_id(random.Random(7)) for _ in range(2)]
    run = random.Random(7)
    again = [new_supporter_id(run), new_supporter_id(run)]
    other = random.Random(8)

    assert first[0] == first[1] == again[0]
    assert again[1] != again[0]
    assert new_supporter_id(other) != again[0]


def test_a_new_supporter_id_keeps_its_leading_zeros() -> None:
    class Small(random.Random):
        def getrandbits(self, k: int, /) -> int:
            return 1

    assert new_supporter_id(Small()) == "sup_" + "0" * 31 + "1"


def test_the_legacy_supporter_id_is_stable_and_shaped() -> None:
    """It must not change: it is how supporters stored before identity links are found."""
    first = legacy_supporter_id("k", "jo@example.org", None)

    assert first == legacy_supporter_id("k", "jo@example.org", None)
    assert re.fullmatch(r"sup_[0-9a-f]{32}", first)
    # The ids stored before ids became random (HMAC-SHA256 under key "k"): known answers.
    assert first == "sup_bc0c9ce6a2484e3cda847f1260ad69a3"
    assert legacy_supporter_id("k", None, "+447911123456") == "sup_b4fe3b20d08833ba280a17261b673f1c"


def test_the_legacy_supporter_id_is_keyed() -> None:
    assert legacy_supporter_id("key-1", "jo@example.org", None) != legacy_supporter_id(
        "key-2", "jo@example.org", None
    )
    assert legacy_supporter_id("key-1", None, "+447911123456") != legacy_supporter_id(
        "key-2", None, "+447911123456"
    )


def test_the_legacy_id_prefers_the_email_over_the_phone() -> None:
    by_email = legacy_supporter_id("k", "jo@example.org", None)
    by_phone = legacy_supporter_id("k", None, "+447911123456")

    assert legacy_supporter_id("k", "jo@example.org", "+447911123456") == by_email
    assert legacy_supporter_id("k", "jo@example.org", "+447700000000") == by_email
    assert by_email != by_phone


def test_different_people_had_different_legacy_ids() -> None:
    ids = {
        legacy_supporter_id("k", "jo@example.org", None),
        legacy_supporter_id("k", "sam@example.org", None),
        legacy_supporter_id("k", None, "+447911123456"),
        legacy_supporter_id("k", None, "+447911123457"),
    }
    assert len(ids) == 4


def test_a_legacy_id_needs_an_email_or_a_phone() -> None:
    with pytest.raises(ValueError, match="an email or a phone"):
        legacy_supporter_id("k", None, None)
    with pytest.raises(ValueError, match="an email or a phone"):
        legacy_supporter_id("k", "", "")


def test_normalised_forms_of_one_address_give_one_legacy_id() -> None:
    ids = {
        legacy_supporter_id("k", normalise_email(raw), None)
        for raw in ("Jo@Example.org", " jo@example.ORG ", "jo@example.org")
    }
    phones = {
        legacy_supporter_id("k", None, normalise_phone(raw))
        for raw in ("07911 123456", "+44 7911 123456", "0044 7911 123456")
    }
    assert len(ids) == len(phones) == 1


def test_an_identity_link_does_not_give_away_the_legacy_id() -> None:
    """The link's HMAC input is set apart (``link:``), so the stored link is not the id."""
    legacy = legacy_supporter_id("k", "jo@example.org", None).removeprefix("sup_")
    link = contact_identity("k", "email", "jo@example.org").removeprefix("email:")

    assert not link.startswith(legacy)


# --- catalogue and JSON Schema ----------------------------------------------------------------


@pytest.mark.parametrize("spec", TOPICS, ids=lambda s: s.name)
def test_every_topic_model_exports_a_json_schema_with_its_fields(spec: Any) -> None:
    schema = spec.model.model_json_schema()

    assert schema["type"] == "object"
    assert set(schema["properties"]) == set(spec.model.model_fields)
    required = {n for n, f in spec.model.model_fields.items() if f.is_required()}
    assert set(schema.get("required", [])) == required
    assert schema.get("additionalProperties") is False
    if spec.name in ANALYTICS_TOPICS:  # their own shape: the person, no ``type`` of their own
        assert {"event_id", "event_time", "person", "key_id"} <= set(schema["required"])
        assert spec.key == "person"
        return
    assert {"event_id", "event_time", "type"} <= set(schema["properties"])
    assert schema["properties"]["type"].get("const", schema["properties"]["type"].get("default"))
    assert spec.key in schema["properties"]


@pytest.mark.parametrize("spec", TOPICS, ids=lambda s: s.name)
def test_the_catalogue_matches_the_models(spec: Any) -> None:
    assert spec.model.topic == spec.name
    assert topic_spec(spec.name) is spec
    assert event_model(spec.name) is spec.model
    assert spec.configs()["cleanup.policy"] in ("delete", "compact")
    if spec.name == "analytics.actions":  # the type of the input event it mirrors
        assert set(get_args(spec.model.model_fields["type"].annotation)) < set(INPUT_TOPICS)
    elif spec.name not in ANALYTICS_TOPICS:
        assert spec.model.model_fields["type"].default == spec.name


def test_the_input_topics_and_the_ingest_models_line_up() -> None:
    # Every posted type has its input topic; the two the ingest derives (a bringer's credit,
    # an identity merge) and the erasure's are input topics nobody posts.
    derived = {"supporter.brought", "identity.merged", "supporter.erased"}
    assert set(INPUT_TOPICS) == {m.topic for m in INGEST_TO_TOPIC.values()} | derived
    assert set(EVENT_TYPES) == {spec.name for spec in TOPICS}
    with pytest.raises(KeyError):
        topic_spec("no.such.topic")
    with pytest.raises(ValueError, match="unknown event type"):
        event_model("no.such.topic")


def test_topic_models_carry_no_contact_details_and_key_by_supporter() -> None:
    """Version 2 of the input topics: the supporter id, the area and the postcode district."""
    event = EventAttended(event_time=WHEN, supporter_id=SID, meeting_id="m-1", district="E2")
    assert event.key() == SID
    assert EventAttended.version == 2
    assert not set(CONTACT_FIELDS) & set(EventAttended.model_fields)
    assert EventAttended.model_validate_json(event.model_dump_json()) == event


def test_a_version_1_record_is_read_without_what_identifies_the_person() -> None:
    """Old records carried email, phone, names, the full postcode and who brought them: they
    stay readable, and all of that is dropped on the way in; the postcode leaves its district."""
    old = {
        "event_time": WHEN.isoformat(),
        "supporter_id": SID,
        "email": "jo@example.org",
        "phone": "+447911123456",
        "first_name": "Jo",
        "last_name": "Bloggs",
        "postcode": "E2 7DJ",
        "brought_by_email": "sam@example.org",
        "meeting_id": "m-1",
        "area": "Hackney",
    }
    event = EventAttended.model_validate_json(json.dumps(old))
    dumped = json.loads(event.model_dump_json())
    assert (dumped["district"], dumped["area"]) == ("E2", "Hackney")
    assert not set(LEGACY_CONTACT_FIELDS) & set(dumped)
    for value in ("jo@example.org", "+447911123456", "Jo", "Bloggs", "E2 7DJ", "sam@"):
        assert value not in event.model_dump_json()


@pytest.mark.parametrize(
    "fields",
    [
        {"supporter_id": "sup_123"},
        {"supporter_id": "SUP_" + "c" * 32},
        {"event_time": datetime(2025, 1, 1)},
        {"district": "E2 7DJ"},
        {"unexpected": 1},
    ],
    ids=["short-id", "upper-id", "naive-time", "full-postcode-as-district", "extra"],
)
def test_topic_models_reject_other_bad_values(fields: dict[str, Any]) -> None:
    base: dict[str, Any] = {"event_time": WHEN, "supporter_id": SID}
    with pytest.raises(ValidationError):
        SupporterSignup(**{**base, **fields})


def test_ingest_models_normalise_what_people_type() -> None:
    signup = SignupIn(
        event_time=WHEN,
        email=" Jo@Example.ORG ",
        phone="07911 123456",
        postcode=" e27dj ",
        event_id=uuid.UUID(int=1),
    )
    assert (signup.email, signup.phone, signup.postcode) == (
        "jo@example.org",
        "+447911123456",
        "E2 7DJ",
    )
    blank = PetitionIn(event_time=WHEN, email="jo@example.org", phone="  ", petition_id="p")
    assert blank.phone is None
    with pytest.raises(ValidationError, match="not a UK postcode"):
        SignupIn(event_time=WHEN, email="jo@example.org", postcode="12345")
