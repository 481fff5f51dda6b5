"""The ledger relay: publishes committed ledger events to their topics, oldest first."""

from __future__ import annotations

import threading
from typing import Any

import structlog
from kafka.errors import KafkaError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from infra.db import epoch_millis
from producers.ledger import mark_published, unpublished

log = structlog.get_logger(__name__)
OUTAGES = (KafkaError, TimeoutError, OperationalError, InterfaceError, PoolTimeoutError)
"""What a broker or database briefly out of reach raises: the relay waits and tries again."""


class LedgerRelay:
    """Transactional outbox relay: an event is marked published only after acks=all.

    A crash between the broker's acknowledgement and the mark publishes it again; the
    stream stage ignores an event id it has seen, so the effect happens once.
    """

    def __init__(self, sessions: sessionmaker[Session], producer: Any, batch: int = 2000) -> None:
        self.sessions = sessions
        self.producer = producer
        self.batch = batch

    def publish_pending(self) -> int:
        """Publish the oldest unpublished rows, each record stamped with the row's accepted_at:
        a ledger published again gives the stream the same arrival times, so it refuses and
        holds back the same events on a replay as it did live."""
        with self.sessions() as session:
            rows = [
                (r.seq, r.topic, r.key, r.payload, epoch_millis(r.accepted_at))
                for r in unpublished(session, self.batch)
            ]
        if not rows:
            return 0
        futures = [
            self.producer.send(topic, key=key.encode(), value=payload.encode(), timestamp_ms=ms)
            for _, topic, key, payload, ms in rows
        ]
        self.producer.flush()
        for future in futures:
            future.get(timeout=30)  # raises if the broker did not acknowledge
        with self.sessions.begin() as session:
            mark_published(session, [seq for seq, *_ in rows])
        return len(rows)

    def run(self, stop: threading.Event, idle_s: float = 0.005) -> None:
        """Publish until ``stop``. An outage is logged and retried after a second; any other
        error is a bug and stops the relay (the supervisor restarts it)."""
        while not stop.is_set():
            try:
                published = self.publish_pending()
            except OUTAGES:
                log.warning("relay.publish_failed", exc_info=True)
                stop.wait(1.0)
                continue
            if published:
                log.debug("relay.published", count=published)
            else:
                stop.wait(idle_s)
