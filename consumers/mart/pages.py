"""The /charts page: the mart's four charts (Vega-Lite specs built by ``charts``), drawn in the
browser by Vega, whose JavaScript the app serves itself (``/charts/vega.js``: no CDN, works
offline). Aggregates only: no row about a person reaches the page, and areas with few people
are left out. Open without a sign-in, like the topic catalogue."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

SECURITY_HEADERS = {
    # Vega draws with its expression interpreter (no eval), so no 'unsafe-eval' is needed;
    # Vega sets inline style attributes on the SVG it draws.
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


FRESH_S = 60.0
"""The figures are computed at most once a minute (seconds): over a year of 100,000
supporters the aggregates take seconds, and a weekly view need not be newer."""


@dataclass
class Drawn:
    figures: list[Any] = field(default_factory=list)
    at: float | None = None
    """Monotonic seconds when computed (None: never)."""
    seconds: float = 0.0
    """How long the aggregates took."""
    read_at: datetime | None = None


def charts_router(
    sessions: sessionmaker[Session],
    templates: Jinja2Templates,
    vega_bundle: Callable[[], str],
    org_name: str,
) -> APIRouter:
    """``vega_bundle()``: the Vega, Vega-Lite and vega-embed JavaScript as one script (built
    once, on the first request for it)."""
    router = APIRouter(include_in_schema=False)
    cached: list[bytes] = []
    drawn = Drawn()
    lock = threading.Lock()

    def read() -> Drawn:
        """The figures, computed again when older than ``FRESH_S`` (one request computes
        them; the others wait for it)."""
        from consumers.mart.charts import figures  # Altair: imported when a page is asked for

        with lock:
            if drawn.at is None or time.monotonic() - drawn.at > FRESH_S:
                started = time.monotonic()
                with sessions() as session:
                    drawn.figures = figures(session)
                drawn.at = time.monotonic()
                drawn.seconds = drawn.at - started
                drawn.read_at = datetime.now(UTC)
            return Drawn(drawn.figures, drawn.at, drawn.seconds, drawn.read_at)

    @router.get("/charts", response_class=HTMLResponse)
    async def charts_page(request: Request) -> Response:
        from consumers.mart.charts import CONVERSION_DAYS, NEXT_STEPS

        found = await run_in_threadpool(read)
        response = templates.TemplateResponse(
            request,
            "charts.html",
            {
                "org_name": org_name,
                "me": None,
                "nav": "charts",
                "figures": found.figures,
                "next_steps": NEXT_STEPS,
                "conversion_days": CONVERSION_DAYS,
                "query_ms": round(found.seconds * 1000),
                "read_at": found.read_at,
            },
            headers=SECURITY_HEADERS,
        )
        response.headers["Server-Timing"] = f"mart;dur={found.seconds * 1000:.1f}"
        return response

    @router.get("/charts/vega.js")
    async def vega_js() -> Response:
        if not cached:
            cached.append((await run_in_threadpool(vega_bundle)).encode())
        return Response(
            cached[0],
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    return router
