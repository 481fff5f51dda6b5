"""The /charts page over a simulated year of 100,000 supporters: the server's time to compute
the charts' aggregates from the mart, and Chromium's time (Debian's, headless, driven by
Playwright) from asking for the page until every chart has drawn.

    python scripts/charts_figures.py [--supporters 100000] [--database-url URL] [--json]

The mart is filled with synthetic rows written straight into its tables (not through the
topics and the sink: that would measure the pipeline, not the page): each person signs up on
a day of the year, takes a few more actions, has a supporter day each time their score
changes, gets two nudges (a fifth held out) with their statuses, and, after a first meeting,
a follow-up task with an outcome. Default: a SQLite file in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy import func, insert, select

import engage.webapp
from consumers.mart import pages
from consumers.mart.charts import figures
from infra.db import (
    MartEvent,
    MartMessage,
    MartSupporterDay,
    MartTask,
    make_engine,
    migrate,
    session_factory,
)
from infra.settings import Settings

AREAS = [(f"Area {n:02d}", f"E{n}") for n in range(1, 41)] + [("Tiny", "TR21")]
STEPS = ("petition.signed", "event.rsvp", "event.attended", "training.completed", "email.clicked")
WEIGHT = {"supporter.signup": 1.0, "petition.signed": 2.0, "event.rsvp": 1.0,
          "event.attended": 5.0, "training.completed": 8.0, "email.clicked": 0.5}  # fmt: skip
RUNGS = ((0.0, "supporter"), (5.0, "activist"), (15.0, "organiser"), (30.0, "leader"))
RULES = ("welcome-email", "petition-to-meeting")
CHUNK = 20_000


def monday(d: date) -> date:
    return d - timedelta(days=d.weekday())


def rows_for(n: int, rng: random.Random, start: datetime) -> dict[str, list[dict[str, Any]]]:
    person = f"p_{uuid.UUID(int=rng.getrandbits(128)).hex}"
    area, district = AREAS[-1] if n % 20_000 == 7 else AREAS[rng.randrange(len(AREAS) - 1)]
    joined = start + timedelta(seconds=rng.randrange(365 * 86400))
    end = start + timedelta(days=365)
    acts = [(joined, "supporter.signup")]
    at = joined
    for _ in range(rng.randrange(0, 6)):
        at += timedelta(hours=rng.randrange(6, 24 * 50))
        if at < end:
            acts.append((at, rng.choice(STEPS)))
    out: dict[str, list[dict[str, Any]]] = {"events": [], "days": [], "messages": [], "tasks": []}
    for index, rule in enumerate(RULES):
        asked = joined + timedelta(hours=1 + 24 * index * rng.randrange(1, 20))
        if asked >= end:
            continue
        held = rng.random() < 0.2
        status = None if held else rng.choices(("delivered", "bounced", "skipped"), (90, 5, 5))[0]
        out["messages"].append(
            {"nudge_id": f"{rule}:{person}", "person": person, "rule": rule,
             "channel": "email" if index == 0 else "sms", "template": rule, "holdout": held,
             "requested_at": asked, "requested_week": monday(asked.date()), "status": status,
             "reason_code": "quiet_hours" if status == "skipped" else None,
             "status_at": None if held else asked + timedelta(minutes=5)}
        )  # fmt: skip
        if rng.random() < (0.2 if held else 0.45):
            step = asked + timedelta(hours=rng.randrange(1, 13 * 24))
            if step < end:
                acts.append((step, rng.choice(("petition.signed", "event.rsvp"))))
    acts.sort()
    score, days, tasked = 0.0, {}, False
    for when, kind in acts:
        out["events"].append(
            {"event_id": uuid.UUID(int=rng.getrandbits(128)), "person": person, "key_id": "k1",
             "type": kind, "event_time": when, "day": when.date(), "week": monday(when.date()),
             "district": district, "area": area}
        )  # fmt: skip
        score += WEIGHT[kind]
        rung = [name for floor, name in RUNGS if score >= floor][-1]
        days[when.date()] = {"person": person, "day": when.date(), "week": monday(when.date()),
                             "rung": rung, "score": score, "as_of": when}  # fmt: skip
        if kind == "event.attended" and not tasked:
            tasked = True
            held = rng.random() < 0.2
            out["tasks"].append(
                {"task_id": f"follow-up:{person}", "person": person, "kind": "call",
                 "rule": "first-meeting-follow-up", "priority": "normal", "holdout": held,
                 "area": area, "created_at": when, "created_week": monday(when.date()),
                 "due_at": when + timedelta(days=2),
                 "outcome": None if held else rng.choice(("reached_committed", "no_answer")),
                 "outcome_at": None if held else when + timedelta(days=1)}
            )  # fmt: skip
    out["days"] = list(days.values())
    return out


def fill(url: str, supporters: int, seed: int = 5) -> dict[str, Any]:
    engine = make_engine(url)
    migrate(engine)
    sessions = session_factory(engine)
    rng = random.Random(seed)
    start = datetime(2025, 12, 1, tzinfo=UTC)
    tables = {"events": MartEvent, "days": MartSupporterDay, "messages": MartMessage,
              "tasks": MartTask}  # fmt: skip
    counts = dict.fromkeys(tables, 0)
    began = time.perf_counter()
    pending: dict[str, list[dict[str, Any]]] = {k: [] for k in tables}
    for n in range(supporters + 1):
        if n < supporters:
            for name, rows in rows_for(n, rng, start).items():
                pending[name].extend(rows)
        if n == supporters or sum(map(len, pending.values())) >= CHUNK:
            with sessions.begin() as session:
                for name, rows in pending.items():
                    if rows:
                        session.execute(insert(tables[name]), rows)
                        counts[name] += len(rows)
                        rows.clear()
    engine.dispose()
    return {f"rows_{k}": v for k, v in counts.items()} | {
        "fill_s": round(time.perf_counter() - began, 1)
    }


def server_times(url: str, repeat: int) -> list[float]:
    engine = make_engine(url)
    sessions = session_factory(engine)
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        with sessions() as session:
            figures(session)
        times.append(round((time.perf_counter() - began) * 1000, 1))
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(MartEvent))
    engine.dispose()
    return times


def browser_times(url: str, home: Path, repeat: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    settings = Settings(home=home, database_url=url, api_token="figures", identity_key="figures")
    app = engage.webapp.create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    loads: dict[str, list[float]] = {"first": [], "cold": [], "cached": []}
    server_ms: list[float] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--no-sandbox"]
            )
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            # The first load also builds Vega's script (then cached by the app and the
            # browser); "cold" loads compute the aggregates again (the page's cache made
            # stale), "cached" ones are served from the page's once-a-minute cache.
            plan = [("first", 60.0)] + [("cold", 0.0)] * repeat + [("cached", 60.0)] * repeat
            for kind, fresh_s in plan:
                pages.FRESH_S = fresh_s
                page = context.new_page()
                began = time.perf_counter()
                response = page.goto(f"{base}/charts")
                page.wait_for_function(
                    "document.querySelectorAll('[data-rendered]').length === 4", timeout=300_000
                )
                loads[kind].append(round((time.perf_counter() - began) * 1000, 1))
                assert response is not None
                if kind == "cold":
                    timing = response.headers.get("server-timing", "mart;dur=0")
                    server_ms.append(float(timing.split("dur=")[1]))
                page.close()
            browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
    return {
        "first_load_ms": loads["first"][0],
        "page_to_all_charts_drawn_ms_cold": loads["cold"],
        "page_to_all_charts_drawn_ms_cold_median": statistics.median(loads["cold"]),
        "of_which_server_aggregates_ms": server_ms,
        "page_to_all_charts_drawn_ms_cached": loads["cached"],
        "page_to_all_charts_drawn_ms_cached_median": statistics.median(loads["cached"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--supporters", type=int, default=100_000)
    parser.add_argument("--database-url", help="default: SQLite in a temporary directory")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="engage-charts-") as home:
        url = args.database_url or f"sqlite:///{home}/engage.db"
        result: dict[str, Any] = {"supporters": args.supporters, "database": url.split(":")[0]}
        result |= fill(url, args.supporters)
        result["server_aggregates_ms"] = server_times(url, args.repeat)
        result |= browser_times(url, Path(home), args.repeat)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, value in result.items():
            print(f"{name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
