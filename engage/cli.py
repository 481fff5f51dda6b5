"""The `engage` command: one console script with a subcommand for everything a person runs.

This is the composition root: it builds the settings and wires the packages together.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from engage import wiring
from engage.extras import require_extras
from infra.logging import configure_logging
from infra.settings import Settings

log = structlog.get_logger("engage")


def _bootstrap(settings: Settings) -> str:
    if not settings.kafka_bootstrap:
        from engage.processes import read_run_file

        return str(read_run_file(settings.home)["bootstrap"])
    return settings.kafka_bootstrap


def _api_url(settings: Settings, url: str | None) -> str:
    if url:
        return url.rstrip("/")
    from engage.processes import read_run_file

    return str(read_run_file(settings.home)["api_url"])


async def _until_stopped(run: Callable[[asyncio.Event], Any]) -> None:
    from engage.processes import watch_parent

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watch_parent()
    await run(stop)


# --- the pipeline's processes ---------------------------------------------------------


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from engage.processes import StopRequest, Supervisor, stop_on_signals

    supervisor = Supervisor(settings)
    stop = StopRequest()
    stop_on_signals(stop)
    try:
        supervisor.start()
        print(f"engage is up. API: {supervisor.api_url}  docs: {supervisor.api_url}/docs")
        print(f"Organisers sign in at {supervisor.api_url}/ (engage organisers password ID)")
        print(f"Analysts: {supervisor.api_url}/charts and {supervisor.api_url}/topics")
        print(f"Kafka bootstrap: {supervisor.bootstrap}  database: {settings.sqlalchemy_url}")
        print(f"Logs: {supervisor.logs}/  Stop with Ctrl-C.", flush=True)
        supervisor.watch(stop)
    finally:
        supervisor.stop(stop.at)
    print("engage stopped.")
    return 0


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from engage.processes import watch_parent
    from engage.webapp import create_app

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
    from engage.metrics import serving
    from engage.processes import stop_on_signals, watch_parent
    from infra.kafka import ledger_producer
    from producers.relay import LedgerRelay

    stop = threading.Event()
    stop_on_signals(stop)
    watch_parent()
    producer = ledger_producer(_bootstrap(settings))
    relay = LedgerRelay(wiring.sessions(settings), producer, health_stale_s=settings.health_stale_s)
    try:
        with serving(settings, relay.liveness):
            relay.run(stop)
    finally:
        producer.close(timeout=3)
    return 0


def cmd_stream(settings: Settings, args: argparse.Namespace) -> int:
    import structlog

    import streams
    from engage.metrics import serving
    from streams.snapshots import SnapshotStore
    from streams.worker import StreamWorker

    # The mypyc build of the fold, or the source if there is none or it is stale.
    structlog.get_logger("engage.stream").info("stream.fold", compiled=streams.COMPILED_FOLD)
    worker = StreamWorker(
        _bootstrap(settings),
        wiring.engine(settings),
        tick_seconds=settings.lapse_check_seconds,
        health_stale_s=settings.health_stale_s,
        snapshots=SnapshotStore(wiring.sessions(settings)),
        snapshot_seconds=settings.stream_snapshot_seconds,
    )
    with serving(settings, worker.liveness):
        asyncio.run(_until_stopped(worker.run))
    return 0


def cmd_analytics(settings: Settings, args: argparse.Namespace) -> int:
    from engage.metrics import serving
    from streams.analytics_worker import AnalyticsWorker

    worker = AnalyticsWorker(
        _bootstrap(settings), wiring.analytics_key(settings), health_stale_s=settings.health_stale_s
    )
    with serving(settings, worker.liveness):
        asyncio.run(_until_stopped(worker.run))
    return 0


def cmd_send(settings: Settings, args: argparse.Namespace) -> int:
    """Only the sender: due nudges out, stale claims reconciled; no Kafka needed."""
    from consumers.runner import send_until

    dispatcher = wiring.dispatcher(settings)
    asyncio.run(_until_stopped(lambda stop: send_until(dispatcher, stop, args.batch)))
    return 0


def cmd_nudges(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.listings import nudge_line
    from consumers.repository import list_nudges, resolve_nudge

    if args.action in ("resend", "mark-sent", "give-up"):
        if not args.nudge_id:
            raise SystemExit(f"nudges {args.action}: name the nudge")
        with wiring.sessions(settings).begin() as session:
            done = resolve_nudge(session, args.nudge_id, args.action)
        print(done)
        return 0 if done.startswith("ok") else 1
    statuses = args.status.split(",") if args.status else None

    def read(session: Any, limit: int) -> list[dict[str, Any]]:
        return list_nudges(session, limit, statuses)

    return _listing(settings, args, read, nudge_line, "nudges")


def cmd_consume(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.runner import ConsumerWorker
    from engage.metrics import serving

    worker = ConsumerWorker(
        _bootstrap(settings),
        wiring.sessions(settings),
        wiring.dispatcher(settings),
        health_stale_s=settings.health_stale_s,
    )
    with serving(settings, worker.liveness):
        asyncio.run(_until_stopped(worker.run))
    return 0


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    from infra.topics import ensure_topics

    created = ensure_topics(
        _bootstrap(settings),
        settings.topic_partitions,
        settings.topics(),
        replication_factor=settings.topic_replication_factor,
        min_insync_replicas=settings.topic_min_insync_replicas,
    )
    print(f"created {len(created)} topics: {', '.join(created) or '-'}")
    return 0


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    from infra.db import make_engine, migrate

    migrate(make_engine(settings.sqlalchemy_url))
    print("database schema is up to date")
    return 0


# --- what a person runs against a running pipeline -----------------------------------


def _aware_datetime(text: str) -> datetime:
    """An ISO-8601 date and time with a time zone (``Z`` or an offset), for argparse."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 date and time: {text!r}") from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a time zone, e.g. {text}Z or {text}+00:00")
    return when


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    import dataclasses

    require_extras("`engage simulate`", "sim")
    from producers.client import IngestClient
    from producers.simulator import simulate

    # The events are a function of the seed, the start and the counts: the start is printed
    # first (in UTC, whole seconds, as the simulator uses it) so that a run can be repeated.
    start: datetime = args.start or datetime.now(UTC) - timedelta(days=args.days)
    start = start.astimezone(UTC).replace(microsecond=0)
    print(
        f"simulating from {start.isoformat()}; "
        f"repeat with --seed {args.seed} --start {start.isoformat()}",
        file=sys.stderr,
    )
    with IngestClient(_api_url(settings, args.url), settings.secret("api_token")) as client:
        report = simulate(
            client,
            supporters=args.supporters,
            seed=args.seed,
            batch_size=args.batch,
            rate=args.rate,
            progress=sys.stderr.isatty(),
            start=start,
            days=args.days,
        )
    summary = {"seed": args.seed, "start": start.isoformat(), **dataclasses.asdict(report)}
    print(json.dumps(summary))
    return 0


def cmd_import_csv(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from producers.client import IngestClient
    from producers.csv_import import format_report, import_sheet, meeting_time

    sheet = Path(args.file)
    if not sheet.is_file():
        raise SystemExit(f"no such file: {sheet}")
    if args.training is not None:
        return _import_training_sheet(settings, args)
    if not args.time:
        raise SystemExit("--time: required with --meeting-id (ISO, with zone)")
    try:
        when = meeting_time(args.time)
    except ValueError as exc:
        raise SystemExit(f"--time: {exc}") from None
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


def _import_training_sheet(settings: Settings, args: argparse.Namespace) -> int:
    """A training's sheet goes straight to the ledger (no API: its event names supporters by
    id, which the import finds through the identity links); the relay publishes it."""
    from pathlib import Path
    from zoneinfo import ZoneInfo

    from producers.training_sheet import (
        format_training_report,
        import_training_sheet,
        training_name,
        when_trained,
    )

    if args.title or args.area or args.url:
        raise SystemExit("--title, --area and --url are for a meeting's sheet")
    now = datetime.now(UTC)
    zone = ZoneInfo(settings.default_timezone)
    try:
        name = training_name(args.training)
    except ValueError as exc:
        raise SystemExit(f"--training: {exc}") from None
    try:
        default = when_trained(args.time, "", zone, now) if args.time else None
    except ValueError as exc:
        raise SystemExit(f"--time: {str(exc).partition(': ')[2]}") from None
    report = import_training_sheet(
        wiring.sessions(settings),
        Path(args.file),
        name,
        identity_key=settings.secret("identity_key"),
        zone=zone,
        now=now,
        default_time=default,
    )
    print(format_training_report(report))
    return 0


def _listing(settings: Settings, args: argparse.Namespace, read: Any, line: Any, noun: str) -> int:
    """Print rows from ``read(session, limit)``: JSON (a list of objects) or a line each."""
    from consumers.listings import render_rows

    with wiring.sessions(settings)() as session:
        rows = read(session, args.limit)
    print(json.dumps(rows, indent=2) if args.json else render_rows(rows, line, noun))
    return 0


def cmd_outbox(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.listings import outbox_entry
    from consumers.repository import list_outbox

    return _listing(settings, args, list_outbox, outbox_entry, "messages")


def cmd_tasks(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.listings import task_line
    from consumers.repository import list_tasks

    return _listing(settings, args, list_tasks, task_line, "tasks")


def cmd_scores(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.listings import score_line
    from consumers.repository import top_scores

    return _listing(settings, args, top_scores, score_line, "supporters")


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from engage.status import pipeline_status, process_health, render_status

    status = pipeline_status(_bootstrap(settings), wiring.sessions(settings))
    status["processes"] = process_health(settings.home)
    print(json.dumps(status, indent=2) if args.json else render_status(status))
    return 0


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    if args.scale_only:
        from engage.bench.restore import restore_figures
        from engage.bench.state import replay_time, state_memory

        figures = state_memory(args.supporters)
        figures.update(replay_time(max(round(args.replay_events / 3.4), 1)))
        if args.restore_supporters:
            figures.update(restore_figures(args.restore_supporters))
    else:
        require_extras("`engage bench`", "bench", "embedded", "sim")
        from engage.bench.run import run_bench

        figures = run_bench(
            events=args.events, latency_seconds=args.latency_seconds, home=settings.home
        )
    print(json.dumps(figures, indent=None if args.json else 2))
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    import random

    require_extras("`engage demo`", "sim")
    from engage.demo import run_demo

    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    return run_demo(settings, supporters=args.supporters, seconds=args.seconds, seed=seed)


def cmd_explain(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import datetime

    from streams.explain import UnknownSupporter, explain, render

    now = datetime.fromisoformat(args.at).timestamp() if args.at else None
    try:
        result = explain(wiring.sessions(settings), wiring.engine(settings), args.supporter_id, now)
    except UnknownSupporter:
        print(f"no events for {args.supporter_id}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from engage.export import subject_access_export

    document = subject_access_export(
        wiring.sessions(settings),
        wiring.engine(settings),
        settings.secret("identity_key"),
        args.supporter,
    )
    if document is None:
        print(f"nobody matches {args.supporter}", file=sys.stderr)
        return 1
    text = document.model_dump_json(indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote the access request's document to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_erase(settings: Settings, args: argparse.Namespace) -> int:
    import getpass

    from engage.erasure import erase, summary

    by = args.by or f"cli:{getpass.getuser()}"
    try:
        result = erase(wiring.sessions(settings), settings.secret("identity_key"), args.who, by)
    except ValueError:
        print("not a supporter id, an email or a phone", file=sys.stderr)
        return 2
    if result is None:
        print("nobody matches: nothing erased", file=sys.stderr)
        return 1
    print(result.model_dump_json(indent=2) if args.json else summary(result))
    return 0


def cmd_retention(settings: Settings, args: argparse.Namespace) -> int:
    from engage.retention import apply_retention, summary

    result = apply_retention(wiring.sessions(settings), settings, dry_run=args.dry_run)
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print(summary(result, embedded=not settings.kafka_bootstrap))
    return 0


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    import time

    from consumers.repository import store_scores, stored_outputs
    from schemas.events import EngagementScored
    from streams.replay import Source, Stored, replay_report, replay_sharded

    engine = wiring.engine(settings)
    sessions = wiring.sessions(settings)
    source = args.source
    where = (
        Source(bootstrap=_bootstrap(settings))
        if source == "topics"
        else Source(database_url=settings.sqlalchemy_url)
    )
    result = replay_sharded(where, engine.playbook, time.time(), args.processes)

    def repair(scores: list[EngagementScored]) -> None:
        with sessions.begin() as session:
            store_scores(session, scores)

    with sessions() as session:
        stored = Stored(*stored_outputs(session))
    report = replay_report(
        source, result, stored, engine.half_life_days, repair=repair if args.repair else None
    )
    print(json.dumps(report, indent=2))
    return 0 if not (report["nudges_new"] or report["tasks_new"]) else 3


def cmd_playbook(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.rendering import TemplateBook
    from streams.playbook import PlaybookError, load_playbook

    try:
        playbook = load_playbook(args.file or settings.playbook, TemplateBook().names)
    except PlaybookError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 1
    model = playbook.model
    print(
        f"{playbook.source}: ok: {len(model.scoring.actions)} weighted actions, "
        f"ladder {' < '.join(playbook.rung_names)}, {len(model.rules)} rules"
    )
    return 0


def cmd_schemas(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from schemas.asyncapi import asyncapi_document
    from schemas.catalogue import json_schemas
    from schemas.compatibility import release_plan

    def write(path: Path, document: object) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2) + "\n")

    schemas = json_schemas()
    if args.action == "release":
        released = Path(args.released)
        before = {p.name: json.loads(p.read_text()) for p in released.glob("*.schema.json")}
        plan = release_plan(schemas, before)
        for item in plan:
            if item.action != "unchanged":
                print(item)
        if any(item.action == "refused" for item in plan):
            print("nothing released", file=sys.stderr)
            return 1
        for item in plan:
            if item.action in ("new", "updated"):
                write(released / item.file, item.schema)
        print(f"{len(plan)} topics' schemas released in {released}/")
        return 0
    for name, schema in schemas.items():
        write(Path(args.out) / f"{name}.schema.json", schema)
    write(Path(args.asyncapi), asyncapi_document())
    print(f"wrote {len(schemas)} JSON Schemas to {args.out}/ and AsyncAPI to {args.asyncapi}")
    return 0


def cmd_tail(settings: Settings, args: argparse.Namespace) -> int:
    from infra.tail import CsvRows, follow, json_line
    from schemas.catalogue import topic_spec

    if args.max < 1:
        raise SystemExit("--max: give 1 or more")
    columns = None
    if args.format == "csv" and args.topic in {spec.name for spec in settings.topics()}:
        columns = list(topic_spec(args.topic).model.model_fields)
    rows = CsvRows(columns)

    def lines(value: bytes | None) -> list[str]:
        return rows.row(value) if args.format == "csv" else [json_line(value)]

    start = "the start" if args.from_beginning else "the end"
    stop = threading.Event()
    stopping = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C: stop after the record in hand
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in stopping}
    records = follow(
        _bootstrap(settings),
        args.topic,
        from_beginning=args.from_beginning,
        group=args.group,
        to_end=args.to_end,
        stop=stop,
        ready=lambda: print(f"reading {args.topic} from {start}", file=sys.stderr, flush=True),
    )
    count = 0
    try:
        if columns is not None:
            print(rows.header(), flush=True)
        for record in records:
            print("\n".join(lines(record.value)), flush=True)
            count += 1
            if count >= args.max:
                break
    except LookupError as exc:
        print(exc, file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        records.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if rows.dropped:
        print(f"fields left out (not in the columns): {sorted(rows.dropped)}", file=sys.stderr)
    print(f"{count} records", file=sys.stderr)
    return 0


def cmd_deadletters(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from producers import deadletters

    try:
        since = deadletters.parse_since(args.since, datetime.now(UTC)) if args.since else None
    except ValueError as exc:
        raise SystemExit(f"--since: {exc}") from None
    chosen = deadletters.Selection(
        frozenset(args.id or ()), args.topic, since, args.contains, args.consumer
    )
    if args.action == "list":
        if args.all or args.again or args.dry_run:
            raise SystemExit("--all, --again and --dry-run go with `engage deadletters redrive`")
        listing = deadletters.list_letters(_bootstrap(settings), wiring.sessions(settings), chosen)
        for problem in listing.unreadable:
            print(problem, file=sys.stderr)
        if args.json:
            print(json.dumps(listing.rows, indent=2))
        else:
            print(deadletters.render_listing(listing))
        return 0
    if not (args.id or args.all):
        raise SystemExit("redrive: name the letters with --id ID ..., or give --all")
    outcomes = deadletters.redrive_letters(
        _bootstrap(settings),
        wiring.sessions(settings),
        chosen,
        again=args.again,
        dry_run=args.dry_run,
    )
    if args.json:
        print(json.dumps([outcome.as_dict() for outcome in outcomes], indent=2))
    else:
        print(deadletters.render_outcomes(outcomes))
    return 0 if all(outcome.ok for outcome in outcomes) else 1


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
        (
            "analytics",
            cmd_analytics,
            "mirror events onto the analysts' analytics.* topics (one process of `up`)",
        ),
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
    simulate.add_argument(
        "--start",
        type=_aware_datetime,
        default=None,
        help="ISO-8601 start of the simulated days, with a time zone (default: --days days "
        "before now); printed, so that the same --seed and --start repeat the same events",
    )
    simulate.add_argument("--days", type=int, default=28, help="simulated days from --start")
    simulate.add_argument("--url", help="API base URL (default: the running pipeline's)")
    simulate.set_defaults(run=cmd_simulate)

    csv_import = sub.add_parser(
        "import-csv", help="import a meeting's or a training's sign-in sheet"
    )
    csv_import.add_argument("file")
    sheet_of = csv_import.add_mutually_exclusive_group(required=True)
    sheet_of.add_argument("--meeting-id")
    sheet_of.add_argument("--training", help="the training's name: its sheet's people trained")
    csv_import.add_argument(
        "--time",
        help="ISO time of the meeting, with zone; of a training, the day (or day and time) of"
        " rows with no date column or a blank date",
    )
    csv_import.add_argument("--title")
    csv_import.add_argument("--area")
    csv_import.add_argument("--url")
    csv_import.set_defaults(run=cmd_import_csv)

    send = sub.add_parser("send", help="run only the sender: due nudges, reconciling")
    send.add_argument("--batch", type=int, default=100, help="nudges claimed at a time")
    send.set_defaults(run=cmd_send)
    nudges = sub.add_parser(
        "nudges", help="list nudges and why (held, skipped, ambiguous...); settle ambiguous ones"
    )
    nudges.add_argument(
        "action", nargs="?", default="list", choices=["list", "resend", "mark-sent", "give-up"]
    )
    nudges.add_argument("nudge_id", nargs="?")
    nudges.add_argument("--status", help="comma-separated statuses, e.g. held,skipped,ambiguous")
    nudges.add_argument("--json", action="store_true")
    nudges.add_argument("--limit", type=int, default=1000)
    nudges.set_defaults(run=cmd_nudges)
    for name, run in (("outbox", cmd_outbox), ("tasks", cmd_tasks), ("scores", cmd_scores)):
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
    bench.add_argument(
        "--scale-only",
        action="store_true",
        help="only the playbook's scale figures: state memory and replay time",
    )
    bench.add_argument("--supporters", type=int, default=1_000_000, help="with --scale-only")
    bench.add_argument("--replay-events", type=int, default=1_000_000, help="with --scale-only")
    bench.add_argument(
        "--restore-supporters",
        type=int,
        default=100_000,
        help="with --scale-only: supporters of the restore-vs-full-replay figures (0: skip)",
    )
    bench.set_defaults(run=cmd_bench)
    demo = sub.add_parser("demo", help="start everything, simulate traffic, watch it flow")
    demo.add_argument("--supporters", type=int, default=300)
    demo.add_argument("--seconds", type=float, default=90.0)
    demo.add_argument("--seed", type=int, default=None, help="default: a new one each run")
    demo.set_defaults(run=cmd_demo)
    explain = sub.add_parser("explain", help="why a supporter's score, rung and nudges are so")
    explain.add_argument("supporter_id")
    explain.add_argument("--json", action="store_true")
    explain.add_argument("--at", help="ISO time to explain as of, with zone (default: now)")
    explain.set_defaults(run=cmd_explain)
    access = sub.add_parser(
        "export", help="a subject access request: all held about a person, as JSON"
    )
    access.add_argument("supporter", metavar="SUPPORTER|EMAIL|PHONE")
    access.add_argument("--out", help="write the document to this file (default: stdout)")
    access.set_defaults(run=cmd_export)
    erase = sub.add_parser("erase", help="erase a person (UK GDPR Article 17), in one transaction")
    erase.add_argument("who", metavar="SUPPORTER|EMAIL|PHONE")
    erase.add_argument("--by", help="who asked, for the audit (default: cli:<your user name>)")
    erase.add_argument("--json", action="store_true")
    erase.set_defaults(run=cmd_erase)
    retention = sub.add_parser(
        "retention",
        help="delete what is past retention (ENGAGE_RETENTION_*_DAYS), log and tables alike",
        description=(
            "Delete, in one transaction, the ledger's events past their topic's retention and "
            "what nothing left in the log derives: nudges, outbox copies, tasks, scores; "
            "superseded consent records, webhook receipts and re-driven dead letters' notes "
            "past theirs. A consent still relied on is restated on the log before its event "
            "goes. `engage up` does this as it starts and every ENGAGE_RETENTION_CHECK_HOURS."
        ),
    )
    retention.add_argument("action", choices=["apply"])
    retention.add_argument("--dry-run", action="store_true", help="count; change nothing")
    retention.add_argument("--json", action="store_true")
    retention.set_defaults(run=cmd_retention)
    replay = sub.add_parser(
        "replay", help="fold the whole log again; compare scores, nudges and tasks with stored"
    )
    replay.add_argument("--source", choices=["ledger", "topics"], default="ledger")
    replay.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="fold in this many processes, split by supporter (default: one per core)",
    )
    replay.add_argument("--repair", action="store_true", help="rewrite stored scores that differ")
    replay.set_defaults(run=cmd_replay)
    playbook = sub.add_parser("playbook", help="check a playbook file")
    playbook.add_argument("action", choices=["check"])
    playbook.add_argument("file", nargs="?", help="default: ENGAGE_PLAYBOOK or the shipped one")
    playbook.set_defaults(run=cmd_playbook)
    letters = sub.add_parser(
        "deadletters",
        help="list the dead letters; re-drive them once the cause is fixed",
        description=(
            "List the records a consumer could not process (id source_topic:partition:offset, "
            "consumer, time, error), or re-drive them: republish each letter's original key and "
            "bytes to its source topic. A letter is re-driven once (noted in the database after "
            "the broker acknowledged it); --again repeats it. A re-driven record that fails "
            "again simply lands in the dead-letter topic again, as a new letter. A letter with "
            "an empty payload, or from a topic not in the catalogue, is refused; the others "
            "still go, and the exit status is 1."
        ),
    )
    letters.add_argument("action", nargs="?", choices=["list", "redrive"], default="list")
    which = letters.add_mutually_exclusive_group()
    which.add_argument("--id", nargs="+", action="extend", metavar="ID", help="these letters")
    which.add_argument("--all", action="store_true", help="redrive every letter the filters pick")
    letters.add_argument("--topic", help="only letters from this source topic")
    letters.add_argument("--since", help="only letters since: 12h, 7d, or an ISO time with zone")
    letters.add_argument("--contains", metavar="TEXT", help="only letters whose error has TEXT")
    letters.add_argument("--consumer", help="only letters of this consumer (stream, consumers)")
    letters.add_argument("--again", action="store_true", help="redrive letters re-driven before")
    letters.add_argument("--dry-run", action="store_true", help="say what would go; change nothing")
    letters.add_argument("--json", action="store_true")
    letters.set_defaults(run=cmd_deadletters)
    # The organisers' follow-up queue: engage groups, organisers, queue (engage/organising.py).
    from engage.organising import add_commands as add_organising_commands

    add_organising_commands(sub)
    # The analysts' mart: engage mart run|rebuild|export (engage/mart.py).
    from engage.mart import add_commands as add_mart_commands

    add_mart_commands(sub)
    export = sub.add_parser(
        "schemas",
        help="write each topic's JSON Schema and the AsyncAPI document; release the schemas",
        description=(
            "write: each topic's JSON Schema (--out) and the AsyncAPI document (--asyncapi), "
            "generated from schemas/. release: keep each event version's schema in --released "
            "(a new version gets its file; a compatible change is recorded in its version's "
            "file; a change that would break a consumer is refused: give the event a new "
            "version). See docs/analysts.md."
        ),
    )
    export.add_argument("action", nargs="?", choices=["write", "release"], default="write")
    export.add_argument("--out", default="schemas/json")
    export.add_argument("--asyncapi", default="docs/asyncapi.json")
    export.add_argument("--released", default="schemas/released")
    export.set_defaults(run=cmd_schemas)
    tail = sub.add_parser(
        "tail",
        help="print a topic's records as they arrive (or from the start), as JSON lines or CSV",
        description=(
            "Print TOPIC's records as they arrive, or from the start with --from-beginning, "
            "until Ctrl-C, --max records, or with --to-end the end of the topic (the high "
            "watermark of the fetch responses: right on the embedded broker too). JSON lines "
            "print each record's value; CSV one column per top-level field (nested values as "
            "JSON). With --group the tail reads in that consumer group and commits what it "
            "printed, so the next run carries on from there."
        ),
    )
    tail.add_argument("topic")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest record")
    tail.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    tail.add_argument("--max", type=int, default=sys.maxsize, metavar="N", help="stop after N")
    tail.add_argument("--group", metavar="ID", help="read in this consumer group, committing")
    tail.add_argument("--to-end", action="store_true", help="stop at the end of the topic")
    tail.set_defaults(run=cmd_tail)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    result: int = args.run(settings, args)
    return result


if __name__ == "__main__":
    sys.exit(main())
