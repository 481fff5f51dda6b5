"""The JSON Schemas analysts read are committed; they must match the models exactly."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.catalogue import TOPICS, json_schemas

COMMITTED = Path(__file__).resolve().parents[2] / "schemas" / "json"


def test_every_topic_has_a_committed_schema_equal_to_its_model() -> None:
    generated = json_schemas()
    assert set(generated) == {spec.name for spec in TOPICS}
    for name, schema in generated.items():
        committed = json.loads((COMMITTED / f"{name}.schema.json").read_text())
        assert committed == schema, f"run `engage schemas` and review the change to {name}"


def test_schemas_name_their_topic_key_and_version() -> None:
    scored = json_schemas()["engagement.scored"]
    assert scored["x-topic"] == "engagement.scored"
    assert scored["x-key"] == "supporter_id"
    assert scored["x-version"] == 1
    assert "score" in scored["properties"]  # type: ignore[operator]
