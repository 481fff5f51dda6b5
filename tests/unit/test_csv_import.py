"""Sign-in sheet import: parsing, validation reasons per column, idempotent event ids."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter

from producers.client import IngestClient
from producers.csv_import import (
    ImportReport,
    RejectedRow,
    format_report,
    import_sheet,
    parse_sign_in_sheet,
)
from schemas.events import IngestEvent

INGEST: TypeAdapter[Any] = TypeAdapter(IngestEvent)
AT = datetime(2026, 3, 3, 18, 30, tzinfo=UTC)
MEETING = "mtg-manchester-20260303-branch"

GOOD = """name,email,mobile,postcode
Ann Smith,ann.smith@example.org,07911 123456,M1 1AA
Bola Adeyemi,,+44 7400 123456,m14 5rt
Mary Ann de Souza,MARY@Example.org,,
"""


def parse(text: str, meeting_id: str = MEETING) -> Any:
    return parse_sign_in_sheet(
        text.splitlines(keepends=True), meeting_id, AT, "Manchester branch meeting", "Manchester"
    )


def test_good_sheet() -> None:
    result = parse(GOOD)
    assert result.rejected == []
    assert result.rows == 3
    assert result.lines == [2, 3, 4]
    first, second, third = result.events
    assert first == {
        "type": "event.attended",
        "event_id": first["event_id"],
        "event_time": "2026-03-03T18:30:00Z",
        "email": "ann.smith@example.org",
        "phone": "+447911123456",
        "first_name": "Ann",
        "last_name": "Smith",
        "postcode": "M1 1AA",
        "area": "Manchester",
        "meeting_id": MEETING,
        "meeting_title": "Manchester branch meeting",
    }
    assert (second["phone"], second["postcode"], "email" in second) == (
        "+447400123456",
        "M14 5RT",
        False,
    )
    assert (third["first_name"], third["last_name"], third["email"]) == (
        "Mary",
        "Ann de Souza",
        "mary@example.org",
    )
    for payload in result.events:
        assert json.loads(json.dumps(payload)) == payload
        INGEST.validate_python(payload)


@pytest.mark.parametrize(
    "header",
    [
        "Name,Email,Mobile,Postcode",
        " Full name , E-mail ,Phone, Post Code ",
        "\ufeffFULL NAME,email address,phone number,postcode",
        "postcode;name;email;mobile",
    ],
)
def test_messy_headers(header: str) -> None:
    if ";" in header:
        row = "M1 1AA;Ann Smith;ann@example.org;07911123456"
    else:
        row = "Ann Smith,ann@example.org,07911123456,M1 1AA"
    result = parse(f"{header}\n{row}\n")
    assert result.rejected == []
    (event,) = result.events
    assert (event["first_name"], event["last_name"]) == ("Ann", "Smith")
    assert (event["email"], event["phone"], event["postcode"]) == (
        "ann@example.org",
        "+447911123456",
        "M1 1AA",
    )


def test_separate_first_and_last_name_columns_and_surname_first() -> None:
    result = parse("First name,Surname,Email\nAnn,Smith,a@example.org\n")
    assert (result.events[0]["first_name"], result.events[0]["last_name"]) == ("Ann", "Smith")
    result = parse('Name,Email\n"Smith, Ann",a@example.org\nCher,c@example.org\n')
    assert [(e["first_name"], e.get("last_name")) for e in result.events] == [
        ("Ann", "Smith"),
        ("Cher", None),
    ]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("Bob,bob@,,", "Email: "),
        ("Bob,bob.example.org,,", "Email: "),
        ("Cara,,07700 900123,", "Mobile: not a valid phone number"),
        ("Cara,,12345,", "Mobile: "),
        ("Dev,,,M1 1AA", "Email/Mobile: an email or a phone is required"),
        ("Eve,eve@example.org,,NOT A CODE", "Postcode: not a UK postcode"),
    ],
)
def test_bad_rows_are_rejected_naming_the_column(row: str, reason: str) -> None:
    result = parse(f"Name,Email,Mobile,Postcode\nAnn,ann@example.org,,\n{row}\n")
    assert len(result.events) == 1
    (rejected,) = result.rejected
    assert rejected.line == 3
    assert rejected.reason.startswith(reason)
    assert "\n" not in rejected.reason and len(rejected.reason) < 200


def test_blank_lines_are_skipped_and_line_numbers_kept() -> None:
    text = "\n\nname,email\n\nAnn,ann@example.org\n , \n,,\nBob,bob@\n\n"
    result = parse(text)
    assert result.rows == 2
    assert result.lines == [5]
    assert result.rejected == [RejectedRow(8, result.rejected[0].reason)]


def test_a_sheet_without_contact_columns_is_refused() -> None:
    result = parse("name,postcode\nAnn,M1 1AA\n")
    assert result.events == []
    assert result.rejected == [RejectedRow(1, "header: no email or mobile column found")]


def test_same_person_twice_on_one_sheet_is_kept_once() -> None:
    result = parse("name,email\nAnn,ann@example.org\nAnn S,Ann@Example.ORG\n")
    assert len(result.events) == 1
    assert result.rejected == [RejectedRow(3, "same person as line 2; kept once")]


def test_same_sheet_twice_gives_the_same_event_ids() -> None:
    first = [e["event_id"] for e in parse(GOOD).events]
    assert [e["event_id"] for e in parse(GOOD).events] == first
    assert len(set(first)) == 3
    reordered = GOOD.splitlines()[0:1] + GOOD.splitlines()[1:][::-1]
    assert sorted(e["event_id"] for e in parse("\n".join(reordered)).events) == sorted(first)
    other_meeting = [e["event_id"] for e in parse(GOOD, "mtg-other").events]
    assert set(other_meeting).isdisjoint(first)


def test_naive_event_time_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone"):
        parse_sign_in_sheet(GOOD.splitlines(), MEETING, datetime(2026, 3, 3, 18, 30))


class FakeIngestAPI:
    """Accepts new ids, reports repeats as duplicates, and refuses any 'Zed' as the API might."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        events = json.loads(request.content)["events"]
        result: dict[str, list[Any]] = {"accepted": [], "duplicates": [], "rejected": []}
        for index, payload in enumerate(events):
            if payload.get("first_name") == "Zed":
                error = {"field": f"events[{index}].event_time", "reason": "in the future"}
                result["rejected"].append({"index": index, "errors": [error]})
                continue
            bucket = "duplicates" if payload["event_id"] in self.seen else "accepted"
            self.seen.add(payload["event_id"])
            result[bucket].append(payload["event_id"])
        return httpx.Response(422 if result["rejected"] else 202, json=result)


def test_import_sheet_merges_parse_and_api_rejections(tmp_path: Path) -> None:
    sheet = tmp_path / "sign-in.csv"
    sheet.write_bytes(
        "Full name,E-mail,Phone\nAnn Smith,ann@example.org,\nBob,bob@,\nZed Zee,z@example.org,\n"
        "Chloé Dubois,chloe@example.org,\n".encode("cp1252")
    )
    api = FakeIngestAPI()
    with IngestClient("http://ingest.test", "t", transport=httpx.MockTransport(api)) as client:
        report = import_sheet(client, sheet, MEETING, AT, batch_size=2, progress=False)
        again = import_sheet(client, sheet, MEETING, AT, progress=False)
    assert (report.rows, report.accepted, report.duplicates) == (4, 2, 0)
    assert [(r.line, r.reason.split(":")[0]) for r in report.rejected] == [
        (3, "E-mail"),
        (4, "event_time"),
    ]
    assert (again.accepted, again.duplicates, len(again.rejected)) == (0, 2, 2)
    text = format_report(report)
    assert "4 rows, 2 imported, 0 already imported, 2 not imported" in text
    assert "line 3: E-mail: " in text
    assert "line 4: event_time: in the future" in text


def test_format_report_without_rejections() -> None:
    report = ImportReport(source="s.csv", meeting_id="m", rows=2, accepted=1, duplicates=1)
    assert format_report(report) == (
        "s.csv (m): 2 rows, 1 imported, 1 already imported, 0 not imported."
    )
