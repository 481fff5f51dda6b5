"""The one web app: mounts every package's routes (composition root, no logic of its own)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline

from infra.db import make_engine, session_factory
from infra.settings import Settings
from producers.api import IngestService, ingest_router, openapi_components
from producers.unsubscribe import unsubscribe_router
from streams.engagement import Engine
from streams.explain import explain_router
from streams.playbook import load_playbook


def create_app(settings: Settings) -> FastAPI:
    sessions = session_factory(make_engine(settings.sqlalchemy_url))
    # Swagger UI and ReDoc served from the package, not a CDN: works on a laptop offline.
    app: FastAPI = FastAPIOffline(
        title="Engage pipeline",
        version="0.1.0",
        description="Ingest supporters' events; the pipeline scores them and sends nudges.",
    )
    service = IngestService(
        sessions=sessions,
        identity_key=settings.secret("identity_key"),
        token=settings.secret("api_token"),
        max_batch=settings.max_batch,
    )
    app.include_router(ingest_router(service))
    engine = Engine(load_playbook(settings.playbook))
    app.include_router(explain_router(sessions, engine, service.token))
    app.include_router(
        unsubscribe_router(sessions, settings.org_name, settings.secret("identity_key"))
    )

    @app.get("/health", tags=["ops"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                openapi_components()
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
