"""The analysts' mart's wiring: `engage mart run|rebuild|export` and the /charts page's router
with its template and Vega's JavaScript. Parsing, printing and wiring only: the logic is in
``consumers.mart``."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.settings import Settings

if TYPE_CHECKING:
    from fastapi import APIRouter
    from sqlalchemy.orm import Session, sessionmaker

TEMPLATES = Path(__file__).parent / "templates"


def vega_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one self-contained script (``window.vegaEmbed``),
    built offline by vl-convert from the copies inside its wheel (about 2 s, 0.9 MB)."""
    import vl_convert

    bundle: str = vl_convert.javascript_bundle()  # type: ignore[call-arg]  # the stub lies
    return bundle


def charts_routes(settings: Settings, sessions: sessionmaker[Session]) -> APIRouter:
    from fastapi.templating import Jinja2Templates

    from consumers.mart.pages import charts_router

    return charts_router(
        sessions, Jinja2Templates(directory=TEMPLATES), vega_bundle, settings.org_name
    )


def cmd_mart(settings: Settings, args: argparse.Namespace) -> int:
    from engage import wiring

    if args.action == "run":
        from consumers.mart.sink import MartWorker
        from engage.cli import _bootstrap, _until_stopped
        from engage.metrics import serving

        worker = MartWorker(
            _bootstrap(settings), wiring.sessions(settings), health_stale_s=settings.health_stale_s
        )
        with serving(settings, worker.liveness):
            asyncio.run(_until_stopped(worker.run))
        return 0
    if args.action == "rebuild":
        from consumers.mart.sink import rebuild
        from engage.cli import _bootstrap

        done = rebuild(_bootstrap(settings), wiring.sessions(settings))
        summary: dict[str, Any] = {
            "records": done.records,
            "refused": done.refused,
            "rows": done.rows,
            "seconds": round(done.seconds, 2),
        }
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            rows = ", ".join(f"{table} {n}" for table, n in done.rows.items())
            print(f"mart rebuilt from {done.records} records in {done.seconds:.1f} s: {rows}")
            if done.refused:
                print(f"{done.refused} records did not validate (see `engage deadletters`)")
        return 0
    from consumers.mart.export import export_mart

    out = Path(args.out or f"mart-export-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
    with wiring.sessions(settings)() as session:
        files = export_mart(session, out, args.format)
    for f in files:
        print(f"{f.path}\t{f.rows} rows")
    return 0


def add_commands(sub: Any) -> None:
    """`engage mart`, on the `engage` parser's subparsers."""
    mart = sub.add_parser(
        "mart",
        help="the analysts' mart: run its sink, rebuild it from the topics, export it",
        description=(
            "run: keep the mart from the analytics.* topics (a process of `engage up`). "
            "rebuild: empty the mart and read the analytics topics again from the start to "
            "their end, in one transaction. export: write each mart table as CSV or Parquet "
            "into --out (default: mart-export-TIME). See docs/analysts.md."
        ),
    )
    mart.add_argument("action", nargs="?", choices=["run", "rebuild", "export"], default="run")
    mart.add_argument("--format", choices=["csv", "parquet"], default="csv")
    mart.add_argument("--out", metavar="DIR", help="with export: where the files go")
    mart.add_argument("--json", action="store_true", help="with rebuild: the summary as JSON")
    mart.set_defaults(run=cmd_mart)
