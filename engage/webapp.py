"""The one web app: mounts every package's routes (composition root, no logic of its own)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Response
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from consumers.repository import Nudges
from engage import wiring
from engage.catalogue import catalogue_router
from engage.erasure import erasure_router
from engage.export import export_router
from engage.mart import charts_routes
from engage.organising import STATIC, organiser_routers
from infra.metrics import exposition
from infra.settings import Settings
from producers.api import IngestService, ingest_router, openapi_components
from producers.unsubscribe import short_opt_out_router, unsubscribe_router
from producers.webhooks import webhooks_router
from streams.explain import explain_router


def create_app(settings: Settings) -> FastAPI:
    sessions = wiring.sessions(settings)
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
    engine = wiring.engine(settings)
    app.include_router(explain_router(sessions, engine, service.token))
    app.include_router(
        export_router(sessions, engine, settings.secret("identity_key"), service.token)
    )
    app.include_router(erasure_router(sessions, settings.secret("identity_key"), service.token))
    app.include_router(
        unsubscribe_router(sessions, settings.org_name, settings.secret("identity_key"))
    )
    app.include_router(
        short_opt_out_router(sessions, settings.org_name, settings.secret("identity_key"))
    )
    twilio_token = settings.twilio_auth_token
    app.include_router(
        webhooks_router(
            sessions,
            identity_key=settings.secret("identity_key"),
            public_url=settings.public_url,
            org_name=settings.org_name,
            twilio_auth_token=twilio_token.get_secret_value() if twilio_token else None,
            sendgrid_public_key=settings.sendgrid_webhook_public_key,
            max_age_s=settings.webhook_max_age_s,
            nudges=Nudges(),
        )
    )
    # The topic catalogue: /asyncapi.json, /schemas/{topic}.json and the /topics page.
    app.include_router(
        catalogue_router(
            settings.topics(),
            partitions=settings.topic_partitions,
            replicas=settings.topic_replication_factor,
            min_insync_replicas=settings.topic_min_insync_replicas,
            version=app.version,
        )
    )

    # The organisers' pages (/, /sign-in, /queue...) and JSON endpoints (/v1/organisers/...).
    for router in organiser_routers(settings, sessions, engine):
        app.include_router(router)
    # The analysts' charts (/charts) from the mart, Vega's JavaScript served by the app.
    app.include_router(charts_routes(settings, sessions))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health", tags=["ops"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    # For Prometheus and the health checks (docs/stream-stage.md, "Metrics and health"), like
    # every worker's metrics port; not part of the API, so not in its OpenAPI document.
    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok", "reason": "ok", "role": "api"}

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
