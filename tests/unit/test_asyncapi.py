"""The catalogue as documents: the AsyncAPI document is valid AsyncAPI 3.0 and says what the
code does, its committed copy is the generated one, and every example message is valid."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from consumers import runner as sinks
from consumers.mart import sink as mart
from schemas.asyncapi import asyncapi_document, retention_text, topic_rows
from schemas.catalogue import (
    DAY_MS,
    FOREVER,
    INPUT_TOPICS,
    TOPICS,
    json_schemas,
    topic_spec,
    with_retention,
)
from schemas.components import COMPONENTS, consumers_of, producers_of
from schemas.events import INGEST_TO_TOPIC
from schemas.examples import example_message
from streams import analytics_worker as analytics
from streams import worker as stream

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "asyncapi.json"
ASYNCAPI_3 = ROOT / "tests" / "fixtures" / "asyncapi" / "asyncapi-3.0.0.schema.json"
BY_NAME = {c.name: c for c in COMPONENTS}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return asyncapi_document()


@pytest.fixture(scope="module")
def asyncapi_3() -> jsonschema_rs.Validator:
    return jsonschema_rs.validator_for(json.loads(ASYNCAPI_3.read_text()))


def test_the_document_is_valid_asyncapi_3(
    document: dict[str, Any], asyncapi_3: jsonschema_rs.Validator
) -> None:
    """Against AsyncAPI's own JSON Schema of 3.0.0, Kafka bindings 0.5.0 included."""
    errors = [f"{e.instance_path}: {e.message[:200]}" for e in asyncapi_3.iter_errors(document)]

    assert errors == []


def test_the_asyncapi_schema_refuses_a_broken_document(
    document: dict[str, Any], asyncapi_3: jsonschema_rs.Validator
) -> None:
    """The check above can fail: a wrong action, partitions, or an unknown field is refused."""
    for path, value in (
        (("operations", "stream.receive.supporter.signup", "action"), "consume"),
        (("channels", "deadletter", "bindings", "kafka", "partitions"), 0),
        (("channels", "deadletter", "partitions"), 4),
    ):
        broken = copy.deepcopy(document)
        node = broken
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

        assert not asyncapi_3.is_valid(broken), path


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_reference_resolves_inside_the_document(document: dict[str, Any]) -> None:
    refs = set(_refs(document))

    assert refs
    for ref in refs:
        _resolve(document, ref)  # KeyError names the dangling one


def test_each_channel_is_a_topic_with_its_message_key_partitions_and_retention(
    document: dict[str, Any],
) -> None:
    channels = document["channels"]
    assert list(channels) == [spec.name for spec in TOPICS]
    for spec in TOPICS:
        channel = channels[spec.name]
        (message_ref,) = channel["messages"].values()
        message = _resolve(document, message_ref["$ref"])
        kafka = channel["bindings"]["kafka"]
        assert channel["address"] == spec.name
        assert kafka["partitions"] == 4
        assert kafka["replicas"] == 1
        assert kafka["topicConfiguration"] == {
            "cleanup.policy": ["delete"],
            "retention.ms": spec.retention_ms,
        }
        assert channel["x-key"] == spec.key
        assert message["payload"] == {"$ref": f"#/components/schemas/{spec.model.__name__}"}
        assert message["bindings"]["kafka"]["key"]["type"] == "string"
        assert spec.key in message["bindings"]["kafka"]["key"]["description"]
        assert message["x-version"] == spec.model.version
        assert channel["x-producers"] == [c.title for c in producers_of(spec.name)]
        assert channel["x-consumers"] == [c.title for c in consumers_of(spec.name)]


def test_the_settings_shape_the_served_document() -> None:
    """The app serves the catalogue as the pipeline creates it (settings' partitions,
    copies and retention)."""
    specs = with_retention({"events": 30, "requests": 0})
    served = asyncapi_document(specs, partitions=12, replicas=3, min_insync_replicas=2)
    signup = served["channels"]["supporter.signup"]["bindings"]["kafka"]
    nudges = served["channels"]["nudge.requested"]["bindings"]["kafka"]

    assert (signup["partitions"], signup["replicas"]) == (12, 3)
    assert signup["topicConfiguration"]["retention.ms"] == 30 * DAY_MS
    assert signup["topicConfiguration"]["min.insync.replicas"] == 2
    assert nudges["topicConfiguration"]["retention.ms"] == FOREVER


def test_operations_say_who_writes_and_who_reads_each_topic(document: dict[str, Any]) -> None:
    operations = document["operations"]
    sends = {
        (op_id.split(".", 1)[0], _resolve(document, op["channel"]["$ref"])["address"])
        for op_id, op in operations.items()
        if op["action"] == "send"
    }
    receives = {
        (op_id.split(".", 1)[0], _resolve(document, op["channel"]["$ref"])["address"])
        for op_id, op in operations.items()
        if op["action"] == "receive"
    }

    assert sends == {(c.name, topic) for c in COMPONENTS for topic in c.produces}
    assert receives == {(c.name, topic) for c in COMPONENTS for topic in c.consumes}
    group = operations["stream.receive.supporter.signup"]["bindings"]["kafka"]["groupId"]
    assert group["enum"] == [stream.GROUP]


def _payload_validator(document: dict[str, Any], ref: str) -> jsonschema_rs.Validator:
    """A message's payload as a schema of its own, its references into the document's
    components kept working."""
    standalone = {"$ref": ref, "components": document["components"]}
    return jsonschema_rs.validator_for(standalone)


def test_payloads_are_json_schemas_and_each_example_is_valid(document: dict[str, Any]) -> None:
    for name, message in document["components"]["messages"].items():
        payload = _resolve(document, message["payload"]["$ref"])
        assert jsonschema_rs.meta.is_valid(payload), name
        validator = _payload_validator(document, message["payload"]["$ref"])
        key = jsonschema_rs.validator_for(message["bindings"]["kafka"]["key"])
        for example in message["examples"]:
            validator.validate(example["payload"])
            key_field = _resolve(document, f"#/channels/{message['title']}")["x-key"]
            key.validate(example["payload"][key_field])


def test_every_topic_has_an_example_valid_against_its_json_schema() -> None:
    """Built from the model with fixed values; a new required field without a value in
    schemas/examples.py fails here."""
    schemas = json_schemas()
    for spec in TOPICS:
        example = example_message(spec)

        jsonschema_rs.validator_for(schemas[spec.name]).validate(example)
        assert spec.model.model_validate(example).model_dump(mode="json") == example
        assert set(example) == set(spec.model.model_fields)


def test_an_example_is_refused_when_it_does_not_fit_the_schema() -> None:
    """The validation above has teeth: the example of a signup without its supporter id, or
    with a contact detail, is invalid."""
    signup = TOPICS[0]
    validator = jsonschema_rs.validator_for(json_schemas()[signup.name])
    without_id = {k: v for k, v in example_message(signup).items() if k != "supporter_id"}
    with_email = {**example_message(signup), "email": "jo@example.org"}

    assert not validator.is_valid(without_id)
    assert not validator.is_valid(with_email)


def test_the_committed_document_is_the_generated_one(document: dict[str, Any]) -> None:
    """`engage schemas` writes docs/asyncapi.json."""
    assert json.loads(COMMITTED.read_text()) == document, "run `engage schemas`"


# --- who writes and reads what, held to the code ------------------------------------------


def test_the_workers_read_what_the_catalogue_says() -> None:
    assert BY_NAME["stream"].consumes == tuple(stream.SUBSCRIBED) == INPUT_TOPICS
    assert BY_NAME["stream"].group == stream.GROUP
    assert set(BY_NAME["sinks"].consumes) == set(sinks.TOPICS)
    assert BY_NAME["sinks"].group == sinks.GROUP
    assert BY_NAME["analytics"].consumes == analytics.SUBSCRIBED
    assert BY_NAME["analytics"].group == analytics.GROUP
    assert BY_NAME["mart"].consumes == mart.TOPICS
    assert BY_NAME["mart"].group == mart.GROUP


def test_the_ingest_api_writes_every_type_it_accepts() -> None:
    accepted = {model.topic for model in INGEST_TO_TOPIC.values()}

    assert accepted <= set(BY_NAME["ingest"].produces)


def test_every_topic_has_a_producer_and_every_component_names_real_topics_and_modules() -> None:
    names = {spec.name for spec in TOPICS}
    for spec in TOPICS:
        assert producers_of(spec.name), f"nothing writes {spec.name}"
    for component in COMPONENTS:
        assert set(component.produces) | set(component.consumes) <= names, component.name
        for where in component.where.split(", "):
            assert (ROOT / where).exists(), f"{component.name}: no {where}"


# --- the page's rows ----------------------------------------------------------------------


def test_the_page_rows_say_what_the_catalogue_says() -> None:
    rows = {row.name: row for row in topic_rows()}

    erased = rows["supporter.erased"]
    assert erased.retention == "forever"
    assert rows["nudge.requested"].retention == "30 days"
    assert [c.name for c in erased.producers] == ["erasure"]
    assert [c.name for c in erased.consumers] == ["stream", "analytics"]
    assert erased.example_key == example_message(topic_spec("supporter.erased"))["supporter_id"]
    fields = {f.name: f for f in rows["task.outcome"].fields}
    assert fields["outcome"].required
    assert fields["outcome"].type.startswith("one of: positive, neutral")
    assert not fields["commitment"].required
    assert fields["commitment"].type == "one of: meeting, host, bring_someone, lead or null"


@pytest.mark.parametrize(
    ("retention_ms", "text"), [(FOREVER, "forever"), (DAY_MS, "1 day"), (730 * DAY_MS, "730 days")]
)
def test_retention_in_words(retention_ms: int, text: str) -> None:
    assert retention_text(retention_ms) == text
