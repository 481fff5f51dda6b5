"""A training's sign-in sheet, read: the day and time of each row, reasons naming the column,
one record per person and day, and ids that repeat when the same sheet is read again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from producers.csv_import import RejectedRow
from producers.training_sheet import (
    TrainingImport,
    TrainingSheet,
    format_training_report,
    parse_training_sheet,
    training_name,
    when_trained,
)

LONDON = ZoneInfo("Europe/London")
NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
DEFAULT = datetime(2026, 11, 10, 19, 0, tzinfo=UTC)

SHEET = """Name,Email,Mobile,Date,Time
Ann Smith,Ann@Example.org,,2026-11-10,
Bola Adeyemi,,07400 123456,10/11/2026,18:30
Cy Jones,cy@example.org,,2026-11-10T19:15:00+01:00,
Dee,dee@example.org,,,
"""


def parse(
    text: str, training: str = "One-to-ones", default_time: datetime | None = DEFAULT
) -> TrainingSheet:
    return parse_training_sheet(
        text.splitlines(keepends=True), training, zone=LONDON, now=NOW, default_time=default_time
    )


def test_each_row_is_a_person_with_the_day_and_time_the_sheet_gives() -> None:
    result = parse(SHEET)
    assert result.rejected == []
    assert (result.rows, result.lines) == (4, [2, 3, 4, 5])
    assert [(p.email, p.phone, p.first_name, p.last_name) for p in result.people] == [
        ("ann@example.org", None, "Ann", "Smith"),
        (None, "+447400123456", "Bola", "Adeyemi"),
        ("cy@example.org", None, "Cy", "Jones"),
        ("dee@example.org", None, "Dee", None),
    ]
    assert [p.event_time for p in result.people] == [
        datetime(2026, 11, 10, 12, 0, tzinfo=LONDON),  # a day alone: noon there
        datetime(2026, 11, 10, 18, 30, tzinfo=LONDON),  # day first, and the time column
        datetime(2026, 11, 10, 18, 15, tzinfo=UTC),  # its own offset
        DEFAULT,  # no date: the sheet's --time
    ]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("Eve,eve@,,2026-11-10,", "Email: "),
        ("Fay,,12345,2026-11-10,", "Mobile: "),
        ("Gus,,,2026-11-10,", "Email/Mobile: an email or a phone is required"),
        ("Hal,hal@example.org,,next tuesday,", "Date: not a date"),
        ("Ida,ida@example.org,,31/02/2026,", "Date: not a date"),
        ("Jo,jo@example.org,,2026-11-10,7pm", "Time: not a time of day"),
        ("Kit,kit@example.org,,2026-11-21,", "Date: in the future"),
        ("Lou,lou@example.org,,2026-11-20,18:00", "Time: in the future"),
    ],
)
def test_a_bad_row_is_refused_naming_its_column_and_the_rest_kept(row: str, reason: str) -> None:
    result = parse(f"{SHEET}{row}\n")
    assert len(result.people) == 4
    (rejected,) = result.rejected
    assert rejected.line == 6
    assert rejected.reason.startswith(reason), rejected.reason


def test_a_blank_date_without_a_time_for_the_sheet_is_refused() -> None:
    result = parse(SHEET, default_time=None)
    assert [p.email for p in result.people] == ["ann@example.org", None, "cy@example.org"]
    assert result.rejected == [
        RejectedRow(5, "Date: blank; give a date, or --time for the sheet"),
    ]


def test_a_sheet_without_a_date_needs_the_time_of_the_training() -> None:
    text = "name,email\nAnn,ann@example.org\n"
    assert parse(text, default_time=None).rejected == [
        RejectedRow(1, "header: no date column; give the training's date (--time)")
    ]
    (person,) = parse(text).people
    assert person.event_time == DEFAULT
    assert parse("name,postcode\nAnn,M1 1AA\n").rejected == [
        RejectedRow(1, "header: no email or mobile column found")
    ]


def test_a_person_is_recorded_once_a_day() -> None:
    text = (
        "email,date\nann@example.org,2026-11-10\nANN@example.org,10/11/2026\n"
        "ann@example.org,2026-11-11\n"
    )
    result = parse(text)
    assert [p.event_time.day for p in result.people] == [10, 11]
    assert result.rejected == [RejectedRow(3, "same as line 2; kept once")]


def test_the_same_sheet_gives_the_same_ids_whatever_its_order() -> None:
    first = [p.event_id for p in parse(SHEET).people]
    assert len(set(first)) == 4
    assert [p.event_id for p in parse(SHEET, "  one-to-ONES ").people] == first
    head, *rows = SHEET.splitlines()
    assert sorted(p.event_id for p in parse("\n".join([head, *rows[::-1]])).people) == sorted(first)
    assert {p.event_id for p in parse(SHEET, "Chairing").people}.isdisjoint(first)
    later = parse(SHEET, default_time=DEFAULT + timedelta(days=1)).people
    assert [p.event_id == q for p, q in zip(later, first, strict=True)] == [True, True, True, False]


def test_a_day_whose_noon_is_still_to_come_is_now() -> None:
    assert when_trained("2026-11-20", "", LONDON, NOW) == NOW
    assert when_trained("20/11/26", "", LONDON, NOW + timedelta(hours=5)) == datetime(
        2026, 11, 20, 12, 0, tzinfo=LONDON
    )


@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
def test_a_training_needs_a_name(name: str) -> None:
    with pytest.raises(ValueError, match="1 to 200"):
        training_name(name)
    with pytest.raises(ValueError, match="1 to 200"):
        parse(SHEET, name)


def test_the_report_counts_and_lists_what_was_refused() -> None:
    report = TrainingImport(
        source="t.csv",
        training="One-to-ones",
        rows=4,
        recorded=2,
        duplicates=1,
        new_supporters=1,
        rejected=[RejectedRow(5, "Email: not valid")],
    )
    assert format_training_report(report) == (
        "t.csv (One-to-ones): 4 rows, 2 recorded (1 new supporters), 1 already recorded,"
        " 1 not imported.\nNot imported:\n  line 5: Email: not valid"
    )
