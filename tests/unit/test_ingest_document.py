"""What the ingest bodies' JSON Schema allows of a contact field, the ingest models accept."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import AttendedIn, SignupIn

WHEN = datetime(2024, 5, 1, 12, tzinfo=UTC)


def documented(field: str) -> dict[str, Any]:
    """The string branch of a field's schema, as the OpenAPI document shows it."""
    (string,) = [
        branch
        for branch in AttendedIn.model_json_schema()["properties"][field]["anyOf"]
        if branch["type"] == "string"
    ]
    return dict(string)


@pytest.mark.parametrize("field", ["email", "phone", "postcode"])
def test_every_value_a_pattern_allows_is_accepted(field: str) -> None:
    doc = documented(field)

    @settings(max_examples=100, derandomize=True, database=None)
    @given(st.from_regex(doc["pattern"], fullmatch=True))
    def accepted(value: str) -> None:
        assert len(value) <= doc["maxLength"]
        event = SignupIn.model_validate(
            {"event_time": WHEN, "email": "jo@example.org", "phone": None, field: value}
        )
        normalised = {"email": value, "phone": value, "postcode": value.upper()}[field]
        assert getattr(event, field).replace(" ", "") == normalised.replace(" ", "")

    accepted()


def test_who_brought_them_is_documented_like_the_supporter() -> None:
    assert documented("brought_by_email") == documented("email")
    assert documented("brought_by_phone") == documented("phone")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("email", "jo@example.test"),  # special-use domain
        ("email", "jo..bloggs@example.org"),
        ("email", "jo@ab--cd.org"),
        ("phone", "+447700900123"),  # the drama range: not a number libphonenumber holds valid
        ("phone", "+10000000"),
        ("postcode", "E2 7D"),
    ],
)
def test_values_the_server_refuses_are_outside_the_patterns(field: str, value: str) -> None:
    assert re.fullmatch(documented(field)["pattern"], value) is None
    with pytest.raises(ValueError):
        SignupIn.model_validate({"event_time": WHEN, "email": "jo@example.org", field: value})


def test_an_email_or_a_phone_is_required_by_the_schema_too() -> None:
    schema = SignupIn.model_json_schema()

    assert schema["anyOf"] == [
        {"required": ["email"], "properties": {"email": {"type": "string"}}},
        {"required": ["phone"], "properties": {"phone": {"type": "string"}}},
    ]
    with pytest.raises(ValueError, match="an email or a phone"):
        SignupIn.model_validate({"event_time": WHEN})
