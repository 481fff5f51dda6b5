"""The `engage` command: one console script with a subcommand for everything a person runs.

This is the composition root: it builds the settings and wires the packages together.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from infra.logging import configure_logging
from infra.settings import Settings

log = structlog.get_logger("engage")


def _sessions(settings: Settings) -> Any:
    from infra.db import make_engine, session_factory

    return session_factory(make_engine(settings.sqlalchemy_url))


def _bootstrap(settings: Settings) -> str:
    if not settings.kafka_bootstrap:
        from infra.processes import read_run_file

        return str(read_run_file(settings.home)["bootstrap"])
    return settings.kafka_bootstrap


def _api_url(settings: Settings, url: str | None) -> str:
    if url:
        return url.rstrip("/")
    from infra.processes import read_run_file

    return str(read_run_file(settings.home)["api_url"])


async def _until_stopped(run: Callable[[asyncio.Event], Any]) -> None:
    from infra.processes import watch_parent

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watch_parent()
    await run(stop)


# --- the pipeline's processes ---------------------------------------------------------


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from infra.processes import Supervisor, stop_on_signals

    supervisor = Supervisor(settings)
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        supervisor.start()
        print(f"engage is up. API: {supervisor.api_url}  docs: {supervisor.api_url}/docs")
        print(f"Kafka bootstrap: {supervisor.bootstrap}  database: {settings.sqlalchemy_url}")
        print(f"Logs: {supervisor.logs}/  Stop with Ctrl-C.", flush=True)
        supervisor.watch(stop)
    finally:
        supervisor.stop()
    print("engage stopped.")
    return 0


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from infra.processes import watch_parent
    from infra.webapp import create_app

    watch_parent()
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=3,
    )
    return 0


def cmd_relay(settings: Settings, args: argparse.Namespace) -> int:
    from infra.kafka import ledger_producer
    from infra.processes import stop_on_signals, watch_parent
    from producers.relay import LedgerRelay

    stop = threading.Event()
    stop_on_signals(stop)
    watch_parent()
    producer = ledger_producer(_bootstrap(settings))
    try:
        LedgerRelay(_sessions(settings), producer).run(stop)
    finally:
        producer.close(timeout=3)
    return 0


def cmd_stream(settings: Settings, args: argparse.Namespace) -> int:
    from streams.worker import StreamWorker

    worker = StreamWorker(
        _bootstrap(settings), _engine(settings), tick_seconds=settings.lapse_check_seconds
    )
    asyncio.run(_until_stopped(worker.run))
    return 0


def _engine(settings: Settings) -> Any:
    """The stream's engine, from the configured playbook, checked against the templates."""
    from consumers.rendering import TemplateBook
    from streams.engagement import Engine
    from streams.playbook import load_playbook

    return Engine(load_playbook(settings.playbook, TemplateBook().names))


def _dispatcher(settings: Settings) -> Any:
    from consumers.dispatch import Dispatcher
    from consumers.messages import Sender
    from consumers.providers import SendGridEmailSender, TwilioSmsSender
    from consumers.rendering import TemplateBook

    senders: dict[str, Sender] = {}
    if settings.sendgrid_api_key:
        senders["email"] = SendGridEmailSender(
            settings.sendgrid_api_key.get_secret_value(),
            settings.sendgrid_from_email,
            settings.org_name,
            host=settings.sendgrid_host,
            timeout_s=settings.provider_timeout_s,
        )
    if settings.twilio_account_sid and settings.twilio_auth_token:
        senders["sms"] = TwilioSmsSender(
            settings.twilio_account_sid,
            settings.twilio_auth_token.get_secret_value(),
            settings.twilio_from_number,
            base_url=settings.twilio_base_url,
            timeout_s=settings.provider_timeout_s,
        )
    return Dispatcher(
        _sessions(settings),
        TemplateBook(),
        senders,
        settings.org_name,
        settings.public_url,
        link_key=settings.secret("identity_key"),
    )


def cmd_consume(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.runner import ConsumerWorker

    worker = ConsumerWorker(_bootstrap(settings), _sessions(settings), _dispatcher(settings))
    asyncio.run(_until_stopped(worker.run))
    return 0


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    from infra.topics import ensure_topics

    created = ensure_topics(_bootstrap(settings), settings.topic_partitions)
    print(f"created {len(created)} topics: {', '.join(created) or '-'}")
    return 0


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    from infra.db import make_engine, migrate

    migrate(make_engine(settings.sqlalchemy_url))
    print("database schema is up to date")
    return 0


# --- what a person runs against a running pipeline -----------------------------------


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    import dataclasses
    from datetime import UTC, datetime, timedelta

    from producers.client import IngestClient
    from producers.simulator import simulate

    with IngestClient(_api_url(settings, args.url), settings.secret("api_token")) as client:
        report = simulate(
            client,
            supporters=args.supporters,
            seed=args.seed,
            batch_size=args.batch,
            rate=args.rate,
            progress=sys.stderr.isatty(),
            start=datetime.now(UTC) - timedelta(days=args.days),
            days=args.days,
        )
    print(json.dumps(dataclasses.asdict(report)))
    return 0


def cmd_import_csv(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import datetime
    from pathlib import Path

    from producers.client import IngestClient
    from producers.csv_import import format_report, import_sheet

    sheet = Path(args.file)
    if not sheet.is_file():
        raise SystemExit(f"no such file: {sheet}")
    try:
        when = datetime.fromisoformat(args.time)
    except ValueError:
        raise SystemExit(f"--time: not an ISO date and time: {args.time!r}") from None
    if when.tzinfo is None:
        raise SystemExit("--time: give a time zone, e.g. 2026-11-10T19:00:00+00:00")
    with IngestClient(_api_url(settings, args.url), settings.secret("api_token")) as client:
        report = import_sheet(
            client,
            sheet,
            meeting_id=args.meeting_id,
            event_time=when,
            meeting_title=args.title,
            area=args.area,
            progress=sys.stderr.isatty(),
        )
    print(format_report(report))
    return 0


def _listing(settings: Settings, args: argparse.Namespace, read: Any, line: Any, noun: str) -> int:
    """Print rows from ``read(session, limit)``: JSON (a list of objects) or a line each."""
    with _sessions(settings)() as session:
        rows = read(session, args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(line(row))
        print(f"{len(rows)} {noun}")
    return 0


def cmd_outbox(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.repository import list_outbox

    def line(row: dict[str, Any]) -> str:
        return f"[{row['channel']}] to {row['to']}  {row['subject'] or ''}\n  {row['body']}\n"

    return _listing(settings, args, list_outbox, line, "messages")


def cmd_tasks(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.repository import list_tasks

    def line(row: dict[str, Any]) -> str:
        return (
            f"due {row['due_at']}  {row['area'] or '-':<12} {row['supporter_id']}  "
            f"{row['kind']}: {row['reason']}"
        )

    return _listing(settings, args, list_tasks, line, "tasks")


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from infra.status import pipeline_status, render_status

    status = pipeline_status(_bootstrap(settings), _sessions(settings))
    print(json.dumps(status, indent=2) if args.json else render_status(status))
    return 0


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    from infra.bench.run import run_bench

    figures = run_bench(
        events=args.events, latency_seconds=args.latency_seconds, home=settings.home
    )
    print(json.dumps(figures, indent=None if args.json else 2))
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    import random

    from infra.demo import run_demo

    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    return run_demo(settings, supporters=args.supporters, seconds=args.seconds, seed=seed)


def cmd_schemas(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from schemas.catalogue import json_schemas

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (out / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
    print(f"wrote {len(json_schemas())} JSON Schemas to {out}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engage", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start broker, API, stream worker and consumers").set_defaults(
        run=cmd_up
    )
    for name, run, text in (
        ("api", cmd_api, "run the ingest API (one process of `up`)"),
        ("relay", cmd_relay, "publish the ledger to Kafka (one process of `up`)"),
        ("stream", cmd_stream, "run the stream worker (one process of `up`)"),
        ("consume", cmd_consume, "store and send nudges, store tasks (one process of `up`)"),
    ):
        sub.add_parser(name, help=text).set_defaults(run=run)
    topics = sub.add_parser("topics", help="create the catalogue's topics")
    topics.add_argument("action", choices=["create"])
    topics.set_defaults(run=cmd_topics)
    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade"])
    db.set_defaults(run=cmd_db)

    simulate = sub.add_parser("simulate", help="send realistic traffic through the API")
    simulate.add_argument("--supporters", type=int, default=100)
    simulate.add_argument("--seed", type=int, default=1)
    simulate.add_argument("--batch", type=int, default=500)
    simulate.add_argument("--rate", type=float, default=None, help="events per second")
    simulate.add_argument("--days", type=int, default=28, help="simulated days, up to now")
    simulate.add_argument("--url", help="API base URL (default: the running pipeline's)")
    simulate.set_defaults(run=cmd_simulate)

    csv_import = sub.add_parser("import-csv", help="import a meeting's sign-in sheet")
    csv_import.add_argument("file")
    csv_import.add_argument("--meeting-id", required=True)
    csv_import.add_argument("--time", required=True, help="ISO time of the meeting, with zone")
    csv_import.add_argument("--title")
    csv_import.add_argument("--area")
    csv_import.add_argument("--url")
    csv_import.set_defaults(run=cmd_import_csv)

    for name, run in (("outbox", cmd_outbox), ("tasks", cmd_tasks)):
        listing = sub.add_parser(name, help=f"list the {name}")
        listing.add_argument("--json", action="store_true")
        listing.add_argument("--limit", type=int, default=1000)
        listing.set_defaults(run=run)
    status = sub.add_parser("status", help="topics, message counts and consumer lag")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=cmd_status)
    bench = sub.add_parser("bench", help="measure throughput and latency on the embedded broker")
    bench.add_argument("--json", action="store_true")
    bench.add_argument("--events", type=int, default=100_000)
    bench.add_argument("--latency-seconds", type=float, default=20.0)
    bench.set_defaults(run=cmd_bench)
    demo = sub.add_parser("demo", help="start everything, simulate traffic, watch it flow")
    demo.add_argument("--supporters", type=int, default=300)
    demo.add_argument("--seconds", type=float, default=90.0)
    demo.add_argument("--seed", type=int, default=None, help="default: a new one each run")
    demo.set_defaults(run=cmd_demo)
    export = sub.add_parser("schemas", help="write each topic's JSON Schema, for analysts")
    export.add_argument("--out", default="schemas/json")
    export.set_defaults(run=cmd_schemas)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    result: int = args.run(settings, args)
    return result


if __name__ == "__main__":
    sys.exit(main())
