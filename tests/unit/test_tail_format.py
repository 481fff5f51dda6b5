"""How `engage tail` prints records: one JSON line each, or CSV of their top-level fields."""

from __future__ import annotations

import csv
import io
import json

import pytest

from infra.tail import CsvRows, json_line


@pytest.mark.parametrize(
    ("value", "line"),
    [
        (b'{"a": 1,\n "b": [1, 2]}', '{"a":1,"b":[1,2]}'),
        ('{"area": "Café Élan"}'.encode(), '{"area":"Café Élan"}'),
        (b"not json", '"not json"'),
        (b"\xff\xfe", '"\ufffd\ufffd"'),
        (None, '""'),
    ],
)
def test_a_record_is_one_line_of_json(value: bytes | None, line: str) -> None:
    assert json_line(value) == line
    json.loads(line)


def _parse(lines: list[str]) -> list[list[str]]:
    return list(csv.reader(io.StringIO("\n".join(lines))))


def test_csv_has_a_column_per_top_level_field_nested_values_as_json() -> None:
    rows = CsvRows()
    first = {
        "supporter_id": "sup_1",
        "score": 2.5,
        "holdout": False,
        "previous_rung": None,
        "context": {"meeting": "Hackney, March"},
        "note": 'said "yes"',
    }
    second = {"supporter_id": "sup_2", "score": 3, "holdout": True, "extra": 1}

    lines = rows.row(json.dumps(first).encode()) + rows.row(json.dumps(second).encode())

    assert _parse(lines) == [
        ["supporter_id", "score", "holdout", "previous_rung", "context", "note"],
        ["sup_1", "2.5", "false", "", '{"meeting":"Hackney, March"}', 'said "yes"'],
        ["sup_2", "3", "true", "", "", ""],
    ]
    assert rows.dropped == {"extra"}


def test_csv_with_known_columns_prints_them_in_order_and_a_non_object_as_value() -> None:
    rows = CsvRows(["event_id", "value"])

    lines = [rows.header(), *rows.row(b'{"value": 1, "event_id": "e1"}'), *rows.row(b"[1, 2]")]

    assert _parse(lines) == [["event_id", "value"], ["e1", "1"], ["", "[1,2]"]]
