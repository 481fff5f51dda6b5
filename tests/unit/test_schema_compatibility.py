"""The released schemas and the compatibility rule: each kind of breaking change is caught, the
compatible ones pass, and every topic's current schema is compatible with its release."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from schemas import compatibility as compat
from schemas.catalogue import TOPICS, json_schemas
from schemas.compatibility import Change, breaking_changes, release_plan, released_file

RELEASED = Path(__file__).resolve().parents[2] / "schemas" / "released"

BASE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "x-key": "supporter_id",
    "x-version": 1,
    "$defs": {
        "Action": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"kind": {"type": "string"}, "at": {"type": "string"}},
            "required": ["kind"],
        }
    },
    "properties": {
        "supporter_id": {"type": "string", "pattern": "^sup_[0-9a-f]{32}$"},
        "channel": {"type": "string", "enum": ["email", "sms"]},
        "type": {"type": "string", "const": "consent.changed"},
        "score": {"type": "number", "description": "Decayed weighted sum."},
        "notes": {"anyOf": [{"type": "string", "maxLength": 1000}, {"type": "null"}]},
        "task_id": {"type": "string", "minLength": 1, "maxLength": 200},
        "actions": {"type": "array", "items": {"$ref": "#/$defs/Action"}},
        "context": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["supporter_id", "channel", "type", "score"],
}


def changed(edit: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    schema = copy.deepcopy(BASE)
    edit(schema)
    return schema


def props(schema: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = schema["properties"]
    return result


BREAKING: list[tuple[str, Callable[[dict[str, Any]], object], str, str]] = [
    ("field removed", lambda s: props(s).pop("score"), "score", compat.REMOVED),
    (
        "optional field removed",
        lambda s: props(s).pop("notes"),
        "notes",
        compat.REMOVED,
    ),
    (
        "retyped",
        lambda s: props(s).__setitem__("score", {"type": "string"}),
        "score",
        compat.RETYPED,
    ),
    (
        "made nullable",
        lambda s: props(s).__setitem__("score", {"anyOf": [{"type": "number"}, {"type": "null"}]}),
        "score",
        compat.RETYPED,
    ),
    (
        "required field added",
        lambda s: (
            props(s).__setitem__("rule", {"type": "string"}),
            s["required"].append("rule"),
        ),
        "rule",
        compat.REQUIRED_ADDED,
    ),
    (
        "optional field made required",
        lambda s: s["required"].append("notes"),
        "notes",
        compat.MADE_REQUIRED,
    ),
    (
        "required field made optional",
        lambda s: s["required"].remove("score"),
        "score",
        compat.MADE_OPTIONAL,
    ),
    (
        "enum value removed",
        lambda s: props(s)["channel"].__setitem__("enum", ["email"]),
        "channel",
        compat.ENUM_VALUE_REMOVED,
    ),
    (
        "enum put on a free string",
        lambda s: props(s)["notes"]["anyOf"][0].__setitem__("enum", ["a", "b"]),
        "notes",
        compat.ENUM_VALUE_REMOVED,
    ),
    (
        "constant changed",
        lambda s: props(s)["type"].__setitem__("const", "consent.updated"),
        "type",
        compat.CONST_CHANGED,
    ),
    (
        "pattern tightened",
        lambda s: props(s)["supporter_id"].__setitem__("pattern", "^sup_[0-9a-f]{40}$"),
        "supporter_id",
        compat.PATTERN_TIGHTENED,
    ),
    (
        "pattern added",
        lambda s: props(s)["task_id"].__setitem__("pattern", "^[a-z-]+:"),
        "task_id",
        compat.PATTERN_TIGHTENED,
    ),
    (
        "format added",
        lambda s: props(s)["task_id"].__setitem__("format", "uuid"),
        "task_id",
        compat.FORMAT_CHANGED,
    ),
    (
        "maximum length lowered",
        lambda s: props(s)["task_id"].__setitem__("maxLength", 100),
        "task_id",
        compat.BOUND_TIGHTENED,
    ),
    (
        "minimum length raised",
        lambda s: props(s)["task_id"].__setitem__("minLength", 5),
        "task_id",
        compat.BOUND_TIGHTENED,
    ),
    (
        "minimum added",
        lambda s: props(s)["score"].__setitem__("minimum", 0),
        "score",
        compat.BOUND_TIGHTENED,
    ),
    (
        "nested field removed",
        lambda s: s["$defs"]["Action"]["properties"].pop("at"),
        "actions[].at",
        compat.REMOVED,
    ),
    (
        "nested field retyped",
        lambda s: s["$defs"]["Action"]["properties"].__setitem__("kind", {"type": "integer"}),
        "actions[].kind",
        compat.RETYPED,
    ),
    (
        "map values retyped",
        lambda s: props(s)["context"].__setitem__("additionalProperties", {"type": "number"}),
        "context.*",
        compat.RETYPED,
    ),
    (
        "key changed",
        lambda s: s.__setitem__("x-key", "nudge_id"),
        "",
        compat.KEY_CHANGED,
    ),
]


@pytest.mark.parametrize(
    ("edit", "path", "kind"),
    [pytest.param(edit, path, kind, id=name) for name, edit, path, kind in BREAKING],
)
def test_each_kind_of_breaking_change_is_caught(
    edit: Callable[[dict[str, Any]], object], path: str, kind: str
) -> None:
    changes = breaking_changes(BASE, changed(edit))

    assert [(c.path, c.kind) for c in changes] == [(path, kind)]


COMPATIBLE: list[tuple[str, Callable[[dict[str, Any]], object]]] = [
    ("optional field added", lambda s: props(s).__setitem__("rule", {"type": "string"})),
    (
        "optional nested field added",
        lambda s: s["$defs"]["Action"]["properties"].__setitem__("area", {"type": "string"}),
    ),
    (
        "enum value added",
        lambda s: props(s)["channel"].__setitem__("enum", ["email", "sms", "whatsapp"]),
    ),
    ("description changed", lambda s: props(s)["score"].__setitem__("description", "Other.")),
    ("title added", lambda s: props(s)["score"].__setitem__("title", "Score")),
    ("default added", lambda s: props(s)["notes"].__setitem__("default", None)),
    ("maximum length raised", lambda s: props(s)["task_id"].__setitem__("maxLength", 500)),
    ("minimum length dropped", lambda s: props(s)["task_id"].pop("minLength")),
    ("pattern dropped", lambda s: props(s)["supporter_id"].pop("pattern")),
    ("retention changed", lambda s: s.__setitem__("x-retention-ms", 1)),
    ("nothing", lambda s: None),
]


@pytest.mark.parametrize("edit", [pytest.param(edit, id=name) for name, edit in COMPATIBLE])
def test_compatible_changes_pass(edit: Callable[[dict[str, Any]], object]) -> None:
    assert breaking_changes(BASE, changed(edit)) == []


def test_several_breaking_changes_are_all_named() -> None:
    def edit(s: dict[str, Any]) -> None:
        props(s).pop("score")
        props(s)["channel"]["enum"] = ["sms"]

    changes = breaking_changes(BASE, changed(edit))

    assert {str(c) for c in changes} == {
        "score: field removed (no longer in the schema)",
        'channel: enum value removed ("email")',
    }


def test_references_are_followed_on_both_sides() -> None:
    """The document's form (components) compares like the model's ($defs)."""
    inline = changed(
        lambda s: props(s).__setitem__("actions", {"type": "array", "items": s["$defs"]["Action"]})
    )

    assert breaking_changes(BASE, inline) == []
    assert breaking_changes(inline, BASE) == []


# --- releasing ---------------------------------------------------------------------------


def test_the_release_plan_releases_new_versions_records_compatible_changes_and_refuses() -> None:
    v2 = changed(lambda s: s.__setitem__("x-version", 2))
    current = {
        "a": changed(lambda s: props(s).__setitem__("rule", {"type": "string"})),
        "b": changed(lambda s: props(s).pop("score")),
        "c": BASE,
        "d": v2,
    }
    released = {released_file(t, 1): BASE for t in ("a", "b", "c", "d")}

    plan = {item.topic: item for item in release_plan(current, released)}

    assert {t: (p.file, p.action) for t, p in plan.items()} == {
        "a": ("a.v1.schema.json", "updated"),
        "b": ("b.v1.schema.json", "refused"),
        "c": ("c.v1.schema.json", "unchanged"),
        "d": ("d.v2.schema.json", "new"),
    }
    assert plan["b"].changes == [Change("score", compat.REMOVED, "no longer in the schema")]
    assert "give b a new version" in str(plan["b"])


# --- the repository's released schemas ----------------------------------------------------


def released() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in RELEASED.glob("*.schema.json")}


def test_every_topic_has_its_current_version_released() -> None:
    files = released()
    missing = [
        released_file(spec.name, spec.model.version)
        for spec in TOPICS
        if released_file(spec.name, spec.model.version) not in files
    ]
    assert missing == [], "run `engage schemas release` and commit schemas/released/"


@pytest.mark.parametrize("spec", TOPICS, ids=lambda spec: spec.name)
def test_the_current_schema_is_compatible_with_its_release(spec: Any) -> None:
    """A breaking change fails here: give the event a new version (its model's ``version``),
    then `engage schemas release` releases it beside the old one."""
    files = released()
    name = released_file(spec.name, spec.model.version)
    if name not in files:
        pytest.fail(f"{name} is not released: run `engage schemas release`")

    changes = breaking_changes(files[name], json_schemas()[spec.name])

    assert [str(c) for c in changes] == [], f"breaking change to {name}: give it a new version"


def test_released_files_are_named_by_topic_and_version_and_none_is_ahead() -> None:
    versions = {spec.name: spec.model.version for spec in TOPICS}
    files = released()
    assert files
    for name, schema in files.items():
        topic, version = schema["x-topic"], schema["x-version"]
        assert name == released_file(topic, version)
        assert version <= versions.get(topic, version), f"{name}: ahead of the model"
