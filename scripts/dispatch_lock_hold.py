"""How long the dispatcher holds the database's write lock per batch of nudges (SQLite).

    python scripts/dispatch_lock_hold.py [--nudges 300] [--batch 100] [--rounds 3]

Seeds a fresh SQLite file as `python -m engage.bench.sending` does (one pending welcome nudge
per supporter, email consent, no provider: the outbox mode), then dispatches it in batches of
``--batch`` and prints, per round, the milliseconds each write transaction lasted. On SQLite
the lock is held from the transaction's first write to its commit; every ingest and sink of
`engage up` waits for it meanwhile, so this is what the dispatcher adds to their latency.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog
from sqlalchemy.orm import Session

from consumers.dispatch import Dispatcher
from consumers.rendering import TemplateBook
from engage.bench.sending import NOON, seed
from engage.wiring import sending_policy
from infra.db import make_engine, migrate, session_factory
from infra.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nudges", type=int, default=300)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="engage-dispatch-") as home:
        engine = make_engine(f"sqlite:///{Path(home) / 'engage.db'}")
        migrate(engine)
        sessions = session_factory(engine)
        held: list[float] = []
        begin = sessions.begin

        @contextmanager
        def timed_begin() -> Iterator[Session]:
            with begin() as session:
                started = time.perf_counter()
                yield session
            held.append((time.perf_counter() - started) * 1000)

        sessions.begin = timed_begin  # type: ignore[method-assign]
        dispatcher = Dispatcher(
            sessions,
            TemplateBook(),
            {},
            "Grassroots Together",
            "http://127.0.0.1",
            "bench-key",
            policy=sending_policy(Settings()),
            clock=lambda: NOON,
        )
        for round_ in range(1, args.rounds + 1):
            seed(sessions, args.nudges)
            held.clear()
            while dispatcher.dispatch_pending(args.batch):
                pass
            per_nudge = sum(held) / args.nudges
            print(
                f"round {round_}: {len(held)} write transactions, held "
                f"{' '.join(f'{h:.0f}' for h in held)} ms "
                f"(median {statistics.median(held):.0f}; {per_nudge:.2f} ms a nudge)"
            )
        engine.dispose()


if __name__ == "__main__":
    main()
