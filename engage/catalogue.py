"""The topic catalogue over HTTP: the AsyncAPI document, each topic's JSON Schema, and the /topics
page for people. What they say is built in ``schemas.asyncapi``; this only serves it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse

from infra.http import ProblemDetail, problem
from schemas.asyncapi import asyncapi_document, topic_rows
from schemas.catalogue import TopicSpec, json_schemas

TEMPLATES = Path(__file__).resolve().parent / "templates"
_JSON_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}


def catalogue_router(
    specs: tuple[TopicSpec, ...],
    *,
    partitions: int,
    replicas: int,
    min_insync_replicas: int,
    version: str,
) -> APIRouter:
    """``specs`` (the settings' catalogue) as the running pipeline creates its topics."""
    document = asyncapi_document(
        specs,
        partitions=partitions,
        replicas=replicas,
        min_insync_replicas=min_insync_replicas,
        version=version,
    )
    schemas = json_schemas(specs)
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    page = environment.get_template("topics.html").render(
        rows=topic_rows(specs, partitions=partitions)
    )
    router = APIRouter(tags=["catalogue"])

    @router.get(
        "/asyncapi.json",
        summary="The AsyncAPI 3.0 document of every topic",
        description="Channels (topics) with their Kafka bindings, messages with their JSON "
        "Schema, key and an example, and which component writes and reads each.",
        response_class=JSONResponse,
        responses={200: {"content": {"application/json": {"schema": _JSON_OBJECT}}}},
    )
    def asyncapi() -> JSONResponse:
        return JSONResponse(document)

    @router.get(
        "/schemas/{topic}.json",
        summary="A topic's JSON Schema",
        description="The JSON Schema its records validate against, with `x-topic`, `x-key`, "
        "`x-version` and `x-retention-ms`.",
        response_class=JSONResponse,
        responses={
            200: {"content": {"application/json": {"schema": _JSON_OBJECT}}},
            404: {"model": ProblemDetail, "description": "No such topic."},
        },
    )
    def topic_schema(topic: str) -> JSONResponse:
        if topic not in schemas:
            return problem(404, "topic", "no such topic: see /topics")
        return JSONResponse(schemas[topic])

    @router.get("/topics", response_class=HTMLResponse, include_in_schema=False)
    def topics() -> HTMLResponse:
        return HTMLResponse(page)

    return router
