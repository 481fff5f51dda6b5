"""`engage schemas` writes the generated documents; `engage schemas release` keeps each
version's schema, records compatible changes and refuses breaking ones, writing nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engage.cli import main
from schemas.asyncapi import asyncapi_document
from schemas.catalogue import TOPICS, json_schemas
from schemas.compatibility import released_file


def test_schemas_writes_each_json_schema_and_the_asyncapi_document(tmp_path: Path) -> None:
    out, document = tmp_path / "json", tmp_path / "asyncapi.json"

    assert main(["schemas", "--out", str(out), "--asyncapi", str(document)]) == 0

    assert json.loads(document.read_text()) == asyncapi_document()
    for name, schema in json_schemas().items():
        assert json.loads((out / f"{name}.schema.json").read_text()) == schema


def test_release_writes_new_versions_then_nothing_more(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    released = tmp_path / "released"

    assert main(["schemas", "release", "--released", str(released)]) == 0
    first = {path.name: path.read_text() for path in released.iterdir()}
    assert main(["schemas", "release", "--released", str(released)]) == 0

    assert set(first) == {released_file(s.name, s.model.version) for s in TOPICS}
    assert {path.name: path.read_text() for path in released.iterdir()} == first
    assert "released supporter.signup.v2.schema.json" in capsys.readouterr().out


def test_release_records_a_compatible_change_and_refuses_a_breaking_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A released file without a field the model has now: an optional field added since
    (compatible, recorded); with a field the model no longer has: a field removed (breaking,
    refused, and then nothing is written, not even the compatible change)."""
    released = tmp_path / "released"
    main(["schemas", "release", "--released", str(released)])
    scored = released / "engagement.scored.v1.schema.json"
    older = json.loads(scored.read_text())
    del older["properties"]["previous_rung"]
    scored.write_text(json.dumps(older))
    capsys.readouterr()

    assert main(["schemas", "release", "--released", str(released)]) == 0
    assert json.loads(scored.read_text()) == json_schemas()["engagement.scored"]
    assert "compatible change recorded in engagement.scored.v1" in capsys.readouterr().out

    scored.write_text(json.dumps(older))
    signup = released / "supporter.signup.v2.schema.json"
    newer = json.loads(signup.read_text())
    newer["properties"]["email"] = {"type": "string"}
    signup.write_text(json.dumps(newer))

    assert main(["schemas", "release", "--released", str(released)]) == 1
    said = capsys.readouterr()
    assert "REFUSED: breaking change to released supporter.signup.v2" in said.out
    assert "email: field removed" in said.out
    assert json.loads(signup.read_text()) == newer
    assert json.loads(scored.read_text()) == older
