"""The ledger relay: publishes committed ledger events to their topics, oldest first.

Metrics: ``engage_relay_*`` here; ``LedgerRelay.liveness`` backs the process's /healthz (its
lag is the rows found unpublished at the last read, up to a batch).
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from typing import Any

import structlog
from kafka.errors import KafkaError
from prometheus_client import Counter, Histogram
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from infra.db import epoch_millis
from infra.metrics import Liveness
from producers.ledger import mark_published, unpublished

log = structlog.get_logger(__name__)
OUTAGES = (KafkaError, TimeoutError, OperationalError, InterfaceError, PoolTimeoutError)
"""What a broker or database briefly out of reach raises: the relay waits and tries again."""

RECORDS_OUT = Counter(
    "engage_relay_records_out", "Ledger events published and acknowledged.", ["topic"]
)
BATCH_SECONDS = Histogram(
    "engage_relay_batch_seconds",
    "Time to publish a batch of ledger rows, wait for the acks and mark them published.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
FAILURES = Counter(
    "engage_relay_publish_failures", "Publish attempts that met an outage (broker or database)."
)


class LedgerRelay:
    """Transactional outbox relay: an event is marked published only after acks=all.

    A crash between the broker's acknowledgement and the mark publishes it again; the
    stream stage ignores an event id it has seen, so the effect happens once.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        producer: Any,
        batch: int = 2000,
        health_stale_s: float = 60.0,
    ) -> None:
        """``health_stale_s``: the patience of the health rule (``infra.metrics.Liveness``)."""
        self.sessions = sessions
        self.producer = producer
        self.batch = batch
        self.backlog = 0  # rows found unpublished at the last read (up to ``batch``)
        self.liveness = Liveness("relay", health_stale_s)

    def publish_pending(self) -> int:
        """Publish the oldest unpublished rows, each record stamped with the row's accepted_at:
        a ledger published again gives the stream the same arrival times, so it refuses and
        holds back the same events on a replay as it did live."""
        with self.sessions() as session:
            rows = [
                (r.seq, r.topic, r.key, r.payload, epoch_millis(r.accepted_at))
                for r in unpublished(session, self.batch)
            ]
        self.backlog = len(rows)
        if not rows:
            return 0
        started = time.perf_counter()
        futures = [
            self.producer.send(topic, key=key.encode(), value=payload.encode(), timestamp_ms=ms)
            for _, topic, key, payload, ms in rows
        ]
        self.producer.flush()
        for future in futures:
            future.get(timeout=30)  # raises if the broker did not acknowledge
        with self.sessions.begin() as session:
            mark_published(session, [seq for seq, *_ in rows])
        BATCH_SECONDS.observe(time.perf_counter() - started)
        for topic, count in Tally(topic for _, topic, *_ in rows).items():
            RECORDS_OUT.labels(topic).inc(count)
        return len(rows)

    def run(self, stop: threading.Event, idle_s: float = 0.005) -> None:
        """Publish until ``stop``. An outage is logged and retried after a second; any other
        error is a bug and stops the relay (the supervisor restarts it)."""
        while not stop.is_set():
            try:
                published = self.publish_pending()
            except OUTAGES:
                FAILURES.inc()
                self.liveness.polled(None, self.backlog)
                log.warning("relay.publish_failed", exc_info=True)
                stop.wait(1.0)
                continue
            self.liveness.polled(None, self.backlog)
            if published:
                self.liveness.batch()
                log.debug("relay.published", count=published)
            else:
                stop.wait(idle_s)
