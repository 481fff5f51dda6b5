"""Whether a change to an event's JSON Schema would break a consumer of the released version.

The rule (docs/analysts.md, "Versions"): within one version of an event, every record ever
written must stay valid under the current schema, and every field a consumer was promised
keeps its name, its type and its presence. So, compared with the released schema of the same
version, breaking are: a field removed; a field retyped (its JSON types changed, ``null``
included); a required field added, or an optional one made required; a required field made
optional; an enum value removed, or a constant changed; a pattern, a format, a length, size or
range bound added or tightened; additional properties forbidden where they were allowed; the
record key changed. Compatible are: an optional field added, an enum value added, a bound
loosened or dropped, and any change of title, description, default or examples. A pattern that
changes at all counts as tightened (whether one regular expression accepts all that another
does is not decided here).

A breaking change needs a new version of the event (``version`` on its model): its schema is
released beside the old ones, which stay.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

REMOVED = "field removed"
RETYPED = "field retyped"
REQUIRED_ADDED = "required field added"
MADE_REQUIRED = "field made required"
MADE_OPTIONAL = "field made optional"
ENUM_VALUE_REMOVED = "enum value removed"
CONST_CHANGED = "constant changed"
PATTERN_TIGHTENED = "pattern tightened"
FORMAT_CHANGED = "format added or changed"
BOUND_TIGHTENED = "bound tightened"
ADDITIONAL_FORBIDDEN = "additional properties forbidden"
KEY_CHANGED = "record key changed"

_UPPER_BOUNDS = ("maxLength", "maxItems", "maxProperties", "maximum", "exclusiveMaximum")
_LOWER_BOUNDS = ("minLength", "minItems", "minProperties", "minimum", "exclusiveMinimum")


@dataclass(frozen=True)
class Change:
    """One breaking difference: where (a field path, ``actions[].kind``; empty for the record
    itself), what kind, and the values before and after."""

    path: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path or '(the record)'}: {self.kind} ({self.detail})"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


class _Walk:
    def __init__(self, old_root: Mapping[str, Any], new_root: Mapping[str, Any]) -> None:
        self.roots = (old_root, new_root)
        self.changes: list[Change] = []

    def add(self, path: str, kind: str, detail: str) -> None:
        self.changes.append(Change(path, kind, detail))

    @staticmethod
    def resolve(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
        """Follow local references (``#/$defs/X``, ``#/components/schemas/X``)."""
        seen = 0
        while "$ref" in node and seen < 32:
            ref = str(node["$ref"])
            if not ref.startswith("#/"):
                raise ValueError(f"only local references are compared, not {ref!r}")
            target: Any = root
            for part in ref[2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            node, seen = target, seen + 1
        return node

    def branches(self, node: Mapping[str, Any], root: Mapping[str, Any]) -> dict[str, Any]:
        """A schema's alternatives by JSON type (``anyOf``/``oneOf`` flattened)."""
        node = self.resolve(node, root)
        alternatives = node.get("anyOf") or node.get("oneOf")
        if alternatives:
            merged: dict[str, Any] = {}
            for branch in alternatives:
                merged.update(self.branches(branch, root))
            return merged
        if "type" in node:
            kinds = node["type"] if isinstance(node["type"], list) else [node["type"]]
        elif "const" in node:
            kinds = [_json_type(node["const"])]
        elif "enum" in node:
            kinds = sorted({_json_type(v) for v in node["enum"]})
        elif "properties" in node:
            kinds = ["object"]
        else:
            kinds = ["any"]
        return {str(kind): node for kind in kinds}

    def compare(self, old: Mapping[str, Any], new: Mapping[str, Any], path: str) -> None:
        old_by_type = self.branches(old, self.roots[0])
        new_by_type = self.branches(new, self.roots[1])
        if set(old_by_type) != set(new_by_type):
            before, after = " | ".join(sorted(old_by_type)), " | ".join(sorted(new_by_type))
            self.add(path, RETYPED, f"{before} -> {after}")
            return
        for kind, old_branch in old_by_type.items():
            self.compare_one(old_branch, new_by_type[kind], path)

    def compare_one(self, old: Mapping[str, Any], new: Mapping[str, Any], path: str) -> None:
        self.values(old, new, path)
        self.strings_and_bounds(old, new, path)
        if any(k in s for k in ("properties", "additionalProperties") for s in (old, new)):
            self.objects(old, new, path)
        if isinstance(old.get("items"), dict) and isinstance(new.get("items"), dict):
            self.compare(old["items"], new["items"], f"{path}[]")

    def values(self, old: Mapping[str, Any], new: Mapping[str, Any], path: str) -> None:
        if "const" in new and ("const" not in old or old["const"] != new["const"]):
            before = json.dumps(old.get("const", old.get("enum", "any value")))
            self.add(path, CONST_CHANGED, f"{before} -> {json.dumps(new['const'])}")
        allowed_old = old.get("enum", [old["const"]] if "const" in old else None)
        allowed_new = new.get("enum", [new["const"]] if "const" in new else None)
        if allowed_new is None or "const" in new:
            return
        if allowed_old is None:
            self.add(path, ENUM_VALUE_REMOVED, f"any value -> one of {allowed_new}")
            return
        gone = [value for value in allowed_old if value not in allowed_new]
        if gone:
            self.add(path, ENUM_VALUE_REMOVED, ", ".join(json.dumps(v) for v in gone))

    def strings_and_bounds(self, old: Mapping[str, Any], new: Mapping[str, Any], path: str) -> None:
        if "pattern" in new and old.get("pattern") != new["pattern"]:
            self.add(path, PATTERN_TIGHTENED, f"{old.get('pattern')!r} -> {new['pattern']!r}")
        if "format" in new and old.get("format") != new["format"]:
            self.add(path, FORMAT_CHANGED, f"{old.get('format')!r} -> {new['format']!r}")
        for bound in _UPPER_BOUNDS:
            if bound in new and (bound not in old or new[bound] < old[bound]):
                self.add(path, BOUND_TIGHTENED, f"{bound} {old.get(bound)} -> {new[bound]}")
        for bound in _LOWER_BOUNDS:
            if bound in new and (bound not in old or new[bound] > old[bound]):
                self.add(path, BOUND_TIGHTENED, f"{bound} {old.get(bound)} -> {new[bound]}")
        if "multipleOf" in new and old.get("multipleOf") != new["multipleOf"]:
            self.add(
                path, BOUND_TIGHTENED, f"multipleOf {old.get('multipleOf')} -> {new['multipleOf']}"
            )

    def objects(self, old: Mapping[str, Any], new: Mapping[str, Any], path: str) -> None:
        prefix = f"{path}." if path else ""
        old_props: Mapping[str, Any] = old.get("properties", {})
        new_props: Mapping[str, Any] = new.get("properties", {})
        old_required, new_required = set(old.get("required", ())), set(new.get("required", ()))
        for name, schema in old_props.items():
            if name not in new_props:
                self.add(f"{prefix}{name}", REMOVED, "no longer in the schema")
            else:
                self.compare(schema, new_props[name], f"{prefix}{name}")
        for name in sorted(new_required - old_required):
            kind = MADE_REQUIRED if name in old_props else REQUIRED_ADDED
            self.add(f"{prefix}{name}", kind, "old records may not have it")
        for name in sorted(old_required - new_required):
            if name in new_props:
                self.add(f"{prefix}{name}", MADE_OPTIONAL, "consumers rely on it being there")
        old_extra, new_extra = (
            old.get("additionalProperties", True),
            new.get("additionalProperties", True),
        )
        if new_extra is False and old_extra is not False:
            self.add(path, ADDITIONAL_FORBIDDEN, "records with other fields become invalid")
        elif isinstance(old_extra, dict) and isinstance(new_extra, dict):
            self.compare(old_extra, new_extra, f"{prefix}*")


def breaking_changes(released: Mapping[str, Any], current: Mapping[str, Any]) -> list[Change]:
    """What in ``current`` would break a consumer of ``released`` (the same event's schema, of
    the same version); empty when the change is compatible."""
    walk = _Walk(released, current)
    if released.get("x-key") != current.get("x-key"):
        walk.add("", KEY_CHANGED, f"{released.get('x-key')} -> {current.get('x-key')}")
    walk.compare(released, current, "")
    return walk.changes


# --- releasing ---------------------------------------------------------------------------


def released_file(topic: str, version: int) -> str:
    """The file name of a released schema: ``<topic>.v<N>.schema.json``."""
    return f"{topic}.v{version}.schema.json"


Action = Literal["new", "updated", "unchanged", "refused"]


@dataclass(frozen=True)
class Release:
    """What ``engage schemas release`` does with one topic's current schema."""

    topic: str
    version: int
    file: str
    action: Action
    schema: dict[str, Any]
    changes: list[Change] = field(default_factory=list)
    """``refused``: the breaking changes."""

    def __str__(self) -> str:
        said = {
            "new": "released",
            "updated": "compatible change recorded in",
            "unchanged": "unchanged",
            "refused": "REFUSED: breaking change to released",
        }[self.action]
        lines = [f"{said} {self.file}"]
        lines += [f"  {change}" for change in self.changes]
        if self.action == "refused":
            lines.append(f"  give {self.topic} a new version (its model's `version`), then release")
        return "\n".join(lines)


def release_plan(
    current: Mapping[str, dict[str, Any]], released: Mapping[str, Mapping[str, Any]]
) -> list[Release]:
    """For each topic's current schema (``json_schemas()``), against the released files (by
    file name): a version not released yet is released; a released version whose schema
    changed compatibly is brought up to date (so the next comparison starts from it); a
    breaking change is refused. Released files of other versions are never touched."""
    plan = []
    for topic, schema in current.items():
        version = int(schema["x-version"])
        name = released_file(topic, version)
        before = released.get(name)
        if before is None:
            plan.append(Release(topic, version, name, "new", schema))
            continue
        changes = breaking_changes(before, schema)
        if changes:
            plan.append(Release(topic, version, name, "refused", schema, changes))
        else:
            action: Action = "unchanged" if before == schema else "updated"
            plan.append(Release(topic, version, name, action, schema))
    return plan
