"""The topic catalogue as documents, generated from the models and the catalogue, never by hand:
an AsyncAPI 3.0 document (``/asyncapi.json``, ``docs/asyncapi.json``) and the rows of the
``/topics`` page."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from schemas.catalogue import DAY_MS, FOREVER, TOPICS, TopicSpec, json_schemas
from schemas.components import COMPONENTS, RELAY, Component, consumers_of, producers_of
from schemas.examples import example_message

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
DEFAULT_PARTITIONS = 4
"""``ENGAGE_TOPIC_PARTITIONS``' default: what the committed document says."""

_DESCRIPTION = """\
Every topic of the supporter engagement pipeline, generated from its event models
(schemas/events.py) and topic catalogue (schemas/catalogue.py).

Records are JSON objects in UTF-8; the record key is the message's key field (the supporter id,
except on `deadletter`), so one supporter's records stay in order on one partition. Every
record has `event_id` (a UUID: deduplicate on it) and `event_time` (when it happened, not when
it arrived). Topics carry pseudonymous supporter ids, never an email, phone, name or full
postcode.

Versions: each event model has a version (`x-version`, the `$id` of its JSON Schema ends in
`:v<N>`). Within a version a schema changes only compatibly: optional fields and enum values
may be added, nothing is removed, retyped, made required or tightened (the released schemas in
schemas/released/ are checked by the tests). A change that would break a consumer comes as a
new version, announced here, and the older version's schema stays released.

Reading to the end: on the embedded broker (Tansu 0.6.0) ListOffsets(latest) answers the last
batch's base offset + 1, so end offsets and lag shown by ListOffsets-based tools are too low;
read to the high watermark of the fetch responses instead (`engage tail`, docs/analysts.md).
"""


def _hoisted(schema: dict[str, Any], shared: dict[str, Any]) -> dict[str, Any]:
    """``schema`` without its ``$id`` and ``$defs``: the definitions moved into ``shared``
    (the document's ``components.schemas``) and its references pointed there."""
    body = copy.deepcopy(schema)
    body.pop("$id", None)
    for name, definition in body.pop("$defs", {}).items():
        if name in shared and shared[name] != definition:
            raise ValueError(f"two different schemas named {name!r}")
        shared[name] = definition

    def repoint(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                key: (
                    value.replace("#/$defs/", "#/components/schemas/", 1)
                    if key == "$ref" and isinstance(value, str)
                    else repoint(value)
                )
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [repoint(item) for item in node]
        return node

    for name in list(shared):
        shared[name] = repoint(shared[name])
    repointed: dict[str, Any] = repoint(body)
    return repointed


def _tag(component: Component) -> dict[str, str]:
    how = f"; its events go through the ledger and {RELAY}" if component.via_ledger else ""
    return {"name": component.name, "description": f"{component.title} ({component.where}){how}."}


def _receive_binding(component: Component) -> dict[str, Any]:
    if component.group is None:
        return {}
    group = {"type": "string", "enum": [component.group]}
    return {"bindings": {"kafka": {"groupId": group, "bindingVersion": KAFKA_BINDING_VERSION}}}


def asyncapi_document(
    specs: tuple[TopicSpec, ...] = TOPICS,
    *,
    partitions: int = DEFAULT_PARTITIONS,
    replicas: int = 1,
    min_insync_replicas: int = 1,
    version: str = "0.1.0",
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``specs``: a channel per topic (its Kafka binding with
    partitions, replicas, ``cleanup.policy`` and ``retention.ms``; its message with the JSON
    Schema as payload, the key, an example), a send or receive operation per component and
    topic, and ``x-producers`` / ``x-consumers`` on each channel."""
    schemas = json_schemas(specs)
    shared: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    for spec in specs:
        name = spec.model.__name__
        payload = _hoisted(schemas[spec.name], shared)
        shared[name] = payload
        key_schema = {
            **payload["properties"][spec.key],
            "description": f"The record key: the message's `{spec.key}` (UTF-8).",
        }
        messages[name] = {
            "name": name,
            "title": spec.name,
            "summary": spec.description,
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{name}"},
            "bindings": {"kafka": {"key": key_schema, "bindingVersion": KAFKA_BINDING_VERSION}},
            "examples": [
                {
                    "name": f"{spec.name}-example",
                    "summary": f"A {spec.name} record (key: its {spec.key}).",
                    "payload": example_message(spec),
                }
            ],
            "x-version": spec.model.version,
        }
        configuration: dict[str, Any] = {
            "cleanup.policy": [spec.configs()["cleanup.policy"]],
            "retention.ms": spec.retention_ms,
        }
        if min_insync_replicas > 1:
            configuration["min.insync.replicas"] = min_insync_replicas
        writers = ", ".join(c.title for c in producers_of(spec.name)) or "nothing"
        readers = ", ".join(c.title for c in consumers_of(spec.name)) or "nothing (analysts)"
        channels[spec.name] = {
            "address": spec.name,
            "title": spec.name,
            "summary": spec.description,
            "description": (
                f"{spec.description} Key: `{spec.key}`. {name} version {spec.model.version}."
                f" Kept {retention_text(spec.retention_ms)}. Written by {writers}; read in the"
                f" pipeline by {readers}."
            ),
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "bindings": {
                "kafka": {
                    "topic": spec.name,
                    "partitions": partitions,
                    "replicas": replicas,
                    "topicConfiguration": configuration,
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            },
            "x-key": spec.key,
            "x-version": spec.model.version,
            "x-retention-period": spec.retention,
            "x-producers": [c.title for c in producers_of(spec.name)],
            "x-consumers": [c.title for c in consumers_of(spec.name)],
        }
    operations: dict[str, Any] = {}
    names = {spec.name: spec.model.__name__ for spec in specs}
    for component in COMPONENTS:
        for action, topics in (("send", component.produces), ("receive", component.consumes)):
            for topic in topics:
                if topic not in names:
                    continue
                verb = "writes" if action == "send" else "reads"
                operations[f"{component.name}.{action}.{topic}"] = {
                    "action": action,
                    "channel": {"$ref": f"#/channels/{topic}"},
                    "title": f"{component.title} {verb} {topic}",
                    "summary": component.summary,
                    "messages": [{"$ref": f"#/channels/{topic}/messages/{names[topic]}"}],
                    "tags": [_tag(component)],
                    **(_receive_binding(component) if action == "receive" else {}),
                }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Engage pipeline topics",
            "version": version,
            "description": _DESCRIPTION,
            "tags": [_tag(component) for component in COMPONENTS],
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"schemas": dict(sorted(shared.items())), "messages": messages},
    }


# --- the /topics page --------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    required: bool
    description: str


@dataclass(frozen=True)
class TopicRow:
    """What the catalogue page says of one topic."""

    name: str
    description: str
    model: str
    version: int
    key: str
    partitions: int
    retention: str
    cleanup_policy: str
    producers: tuple[Component, ...]
    consumers: tuple[Component, ...]
    fields: tuple[Field, ...]
    example: str
    """The example message, as indented JSON."""
    example_key: str


def retention_text(retention_ms: int) -> str:
    if retention_ms == FOREVER:
        return "forever"
    days = retention_ms / DAY_MS
    return f"{days:g} days" if days != 1 else "1 day"


def _type_text(prop: dict[str, Any]) -> str:
    """A property's JSON Schema type in a few words: "string (uuid)", "one of: a, b"..."""
    if "const" in prop:
        return f"always {json.dumps(prop['const'])}"
    if "enum" in prop:
        return "one of: " + ", ".join(str(value) for value in prop["enum"])
    if "anyOf" in prop:
        return " or ".join(_type_text(branch) for branch in prop["anyOf"])
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    kind = str(prop.get("type", "any"))
    if kind == "array":
        return f"array of {_type_text(prop.get('items', {}))}"
    if kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"object of {_type_text(prop['additionalProperties'])}"
    if "format" in prop:
        return f"{kind} ({prop['format']})"
    if "pattern" in prop:
        return f"{kind} matching {prop['pattern']}"
    return kind


def topic_rows(
    specs: tuple[TopicSpec, ...] = TOPICS, *, partitions: int = DEFAULT_PARTITIONS
) -> list[TopicRow]:
    schemas = json_schemas(specs)
    rows = []
    for spec in specs:
        schema = schemas[spec.name]
        required = set(schema.get("required", ()))
        fields = tuple(
            Field(name, _type_text(prop), name in required, prop.get("description", ""))
            for name, prop in schema["properties"].items()
        )
        example = example_message(spec)
        rows.append(
            TopicRow(
                name=spec.name,
                description=spec.description,
                model=spec.model.__name__,
                version=spec.model.version,
                key=spec.key,
                partitions=partitions,
                retention=retention_text(spec.retention_ms),
                cleanup_policy=spec.configs()["cleanup.policy"],
                producers=producers_of(spec.name),
                consumers=consumers_of(spec.name),
                fields=fields,
                example=json.dumps(example, indent=2),
                example_key=str(example[spec.key]),
            )
        )
    return rows
