"""Sending benchmark: what the checks and the exactly-once bookkeeping cost per nudge.

Usage: ``python -m engage.bench.sending [--nudges 3000] [--database-url URL] [--json]``.

Four runs in one process, on fresh tables of one database (SQLite under a temporary
directory by default), each over the same ``--nudges`` email nudges to distinct supporters:

The tables are emptied between runs: a ``--database-url`` must name a scratch database (one
with supporters is refused).

- ``outbox_no_policy``: the outbox mode with no quiet hours, caps or staleness (consent and the
  suppression list are always checked): the baseline;
- ``outbox_policy``: the same with the settings' default policy (caps read per batch);
- ``sdk_only``: the SendGrid SDK posting the same number of messages to a local loopback stub,
  with no database: the provider call on its own;
- ``provider_policy``: the dispatcher through that SDK and stub: claim, call, record.

Only loopback addresses are used. Each run stops at ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from consumers.dispatch import Dispatcher, SendingPolicy
from consumers.messages import OutgoingMessage, Sender
from consumers.providers import SendGridEmailSender
from consumers.rendering import TemplateBook
from infra.db import (
    Base,
    ConsentRecord,
    LedgerEvent,
    Nudge,
    OutboxMessage,
    Supporter,
    make_engine,
    migrate,
    session_factory,
)
from infra.logging import configure_logging

NOON = datetime(2026, 1, 14, 12, 0, tzinfo=UTC)
"""The benchmark's clock: a weekday noon in London, outside any default quiet hours."""


class _Accepting(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(202)
        self.send_header("X-Message-Id", uuid.uuid4().hex[:22])
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def accepting_stub() -> Iterator[str]:
    """A loopback HTTP server that answers every POST 202, as SendGrid's mail send does."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Accepting)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()


def seed(sessions: sessionmaker[Session], nudges: int) -> None:
    """Fresh tables: ``nudges`` supporters with email consent, one welcome nudge each."""
    with sessions.begin() as session:
        for model in (Nudge, OutboxMessage, ConsentRecord, Supporter, LedgerEvent):
            session.execute(delete(model))
    people, consent, wanted = [], [], []
    for n in range(nudges):
        sid = f"sup_{n:032x}"
        people.append({"supporter_id": sid, "email": f"bench{n}@example.org", "first_name": "Jo"})
        consent.append(
            {
                "supporter_id": sid,
                "channel": "email",
                "granted": True,
                "source": "bench",
                "recorded_at": NOON - timedelta(days=1),
            }
        )
        wanted.append(
            {
                "nudge_id": f"welcome:{sid}",
                "supporter_id": sid,
                "channel": "email",
                "template": "welcome",
                "rule": "welcome",
                "cause_event_id": uuid.uuid4(),
                "context": {},
                "status": "pending",
                "requested_at": NOON - timedelta(minutes=1),
                "created_at": NOON - timedelta(minutes=1),
            }
        )
    with sessions.begin() as session:
        session.execute(insert(Supporter), people)
        session.execute(insert(ConsentRecord), consent)
        session.execute(insert(Nudge), wanted)


def run_dispatcher(
    sessions: sessionmaker[Session],
    senders: dict[str, Sender],
    policy: SendingPolicy,
    nudges: int,
    timeout_s: float,
) -> dict[str, Any]:
    seed(sessions, nudges)
    dispatcher = Dispatcher(
        sessions,
        TemplateBook(),
        senders,
        "Grassroots Together",
        "http://127.0.0.1",
        "bench-key",
        policy=policy,
        clock=lambda: NOON,
    )
    started = time.perf_counter()
    settled = 0
    while settled < nudges and time.perf_counter() - started < timeout_s:
        claimed = dispatcher.dispatch_pending(100)
        if not claimed:
            break
        settled += claimed
    seconds = time.perf_counter() - started
    return {"nudges": settled, "seconds": round(seconds, 2), "per_s": round(settled / seconds)}


def run_sdk_only(url: str, nudges: int, timeout_s: float) -> dict[str, Any]:
    sender = SendGridEmailSender("SG.bench", "hello@example.org", "Bench", host=url)
    message = OutgoingMessage(
        "bench", "email", "jo@example.org", "Hello", "Hi Jo. Unsubscribe: http://x"
    )
    started = time.perf_counter()
    sent = 0
    while sent < nudges and time.perf_counter() - started < timeout_s:
        sender.send(message)
        sent += 1
    seconds = time.perf_counter() - started
    return {"nudges": sent, "seconds": round(seconds, 2), "per_s": round(sent / seconds)}


def measure(engine: Engine, nudges: int, timeout_s: float) -> dict[str, Any]:
    from engage.wiring import sending_policy
    from infra.settings import Settings

    sessions = session_factory(engine)
    default = sending_policy(Settings())
    figures: dict[str, Any] = {"database": engine.dialect.name}
    runs: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        (
            "outbox_no_policy",
            lambda: run_dispatcher(sessions, {}, SendingPolicy(), nudges, timeout_s),
        ),
        ("outbox_policy", lambda: run_dispatcher(sessions, {}, default, nudges, timeout_s)),
    ]
    with accepting_stub() as url:
        sender = SendGridEmailSender("SG.bench", "hello@example.org", "Bench", host=url)
        runs += [
            ("sdk_only", lambda: run_sdk_only(url, nudges, timeout_s)),
            (
                "provider_policy",
                lambda: run_dispatcher(sessions, {"email": sender}, default, nudges, timeout_s),
            ),
        ]
        for name, run in runs:
            figures[name] = run()
    base = figures["outbox_no_policy"]["per_s"]
    figures["outbox_policy_vs_baseline"] = round(figures["outbox_policy"]["per_s"] / base, 2)
    sdk = figures["sdk_only"]["per_s"]
    figures["provider_vs_sdk_only"] = round(figures["provider_policy"]["per_s"] / sdk, 2)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m engage.bench.sending")
    parser.add_argument("--nudges", type=int, default=3000)
    parser.add_argument("--database-url", help="default: SQLite in a temporary directory")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per run")
    args = parser.parse_args(argv)
    configure_logging("warning")  # a log line per nudge would be measured too
    os.environ.setdefault("NO_PROXY", "127.0.0.1")  # urllib would obey a proxy setting
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        engine = make_engine(url)
        migrate(engine)
        with engine.connect() as connection:
            if connection.execute(select(func.count()).select_from(Supporter)).scalar():
                raise SystemExit("--database-url: not a scratch database (it has supporters)")
        try:
            figures = measure(engine, args.nudges, args.timeout)
        finally:
            if args.database_url is None:
                Base.metadata.drop_all(engine)
            engine.dispose()
    json.dump(figures, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
