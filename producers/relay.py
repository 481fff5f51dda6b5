"""The ledger relay: publishes committed ledger events to their topics, oldest first.

Metrics: ``engage_relay_*`` here; ``LedgerRelay.liveness`` backs the process's /healthz (its
lag is the rows found unpublished at the last read, up to a batch).
"""

from __future__ import annotations

import contextlib
import select
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import structlog
from kafka.errors import KafkaError
from prometheus_client import Counter, Histogram
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from infra.db import epoch_millis
from infra.metrics import Liveness
from producers.ledger import LEDGER_CHANNEL, mark_published, unpublished

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

    In ``run`` the mark of a batch is written in the background while the next batch is read
    and sent (rows published and not yet marked are left out of the reads): on SQLite the
    mark waits for the write lock behind the API's and the sinks' transactions, and the
    relay need not wait with it; marks are at least ``mark_every_s`` apart, so a busy relay
    takes the write lock a few times a second, not once a batch. An idle relay sleeps until
    PostgreSQL delivers the ingest's NOTIFY (``producers.ledger.LEDGER_CHANNEL``); on SQLite
    it asks every ``idle_s`` whether anyone committed (``PRAGMA data_version``, far cheaper
    than the read), and reads at least every ``fallback_s`` either way.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        producer: Any,
        batch: int = 2000,
        health_stale_s: float = 60.0,
        fallback_s: float = 0.5,
        mark_every_s: float = 0.1,
    ) -> None:
        """``health_stale_s``: the patience of the health rule (``infra.metrics.Liveness``).
        ``fallback_s``: on PostgreSQL, how long the relay sleeps without a notification (the
        ledger's other writers, erasure and retention, do not notify) before it looks;
        on SQLite, the longest it goes without reading. ``mark_every_s``: the least time
        between two background marks."""
        self.sessions = sessions
        self.producer = producer
        self.batch = batch
        self.fallback_s = fallback_s
        self.mark_every_s = mark_every_s
        self.backlog = 0  # rows found unpublished at the last read (up to ``batch``)
        self.liveness = Liveness("relay", health_stale_s)
        self._unmarked: list[int] = []  # published and acknowledged, not yet marked
        self._marking: Future[None] | None = None
        self._marking_count = 0  # the first seqs of ``_unmarked`` being marked now

    def publish_pending(self) -> int:
        """Publish the oldest unpublished rows and mark them published; return how many.

        Each record is stamped with the row's accepted_at: a ledger published again gives
        the stream the same arrival times, so it refuses and holds back the same events on a
        replay as it did live."""
        published = self._publish_next()
        self._finish_marking()
        self._mark(len(self._unmarked))
        return published

    def _publish_next(self) -> int:
        unmarked = set(self._unmarked)
        with self.sessions() as session:
            rows = [
                (r.seq, r.topic, r.key, r.payload, epoch_millis(r.accepted_at))
                for r in unpublished(session, self.batch + len(unmarked))
                if r.seq not in unmarked
            ][: self.batch]
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
        self._unmarked.extend(seq for seq, *_ in rows)
        BATCH_SECONDS.observe(time.perf_counter() - started)
        for topic, count in Tally(topic for _, topic, *_ in rows).items():
            RECORDS_OUT.labels(topic).inc(count)
        return len(rows)

    def _mark(self, count: int) -> None:
        """Mark the first ``count`` unmarked rows published, and forget them."""
        if count:
            self._write_mark(self._unmarked[:count])
            del self._unmarked[:count]

    def _finish_marking(self, wait: bool = True) -> None:
        """Collect the background mark (waiting for it when ``wait``): forget what it marked,
        or raise what stopped it (its rows stay unmarked and are marked again)."""
        marking = self._marking
        if marking is None or not (wait or marking.done()):
            return
        self._marking = None
        try:
            marking.result()
        finally:
            count, self._marking_count = self._marking_count, 0
        del self._unmarked[:count]

    def _start_marking(self, pool: ThreadPoolExecutor) -> None:
        if self._marking is None and self._unmarked:
            seqs = list(self._unmarked)
            self._marking_count = len(seqs)
            self._marking = pool.submit(self._write_mark, seqs)

    def _write_mark(self, seqs: list[int]) -> None:
        with self.sessions.begin() as session:
            mark_published(session, seqs)

    def run(self, stop: threading.Event, idle_s: float = 0.005) -> None:
        """Publish until ``stop``. An outage is logged and retried after a second; any other
        error is a bug and stops the relay (the supervisor restarts it). ``idle_s``: on
        SQLite, how often an idle relay asks whether anything was committed."""
        waker = waker_for(self.sessions, idle_s)
        with ThreadPoolExecutor(1, thread_name_prefix="relay-mark") as pool:
            try:
                self._loop(stop, pool, waker)
            finally:
                waker.close()
                try:  # what was published is marked, so a restart does not send it again
                    self._finish_marking()
                    self._mark(len(self._unmarked))
                except OUTAGES:
                    log.warning("relay.mark_failed", exc_info=True)

    def _loop(self, stop: threading.Event, pool: ThreadPoolExecutor, waker: Waker) -> None:
        next_mark = 0.0  # monotonic: marks are spaced by ``mark_every_s``, fewer writes
        while not stop.is_set():
            try:
                # A mark lagging a batch behind holds the relay back, so reads stay short.
                self._finish_marking(wait=len(self._unmarked) >= self.batch)
                if self._unmarked and time.monotonic() >= next_mark:
                    next_mark = time.monotonic() + self.mark_every_s
                    self._start_marking(pool)
                waker.drain()  # what was committed until now is read now
                published = self._publish_next()
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
                waker.wait(stop, self.mark_every_s if self._unmarked else self.fallback_s)


class Waker(Protocol):
    """How an idle relay learns that the ledger may have new rows."""

    def drain(self) -> None:
        """Forget what was announced so far: the relay reads the ledger next."""

    def wait(self, stop: threading.Event, timeout_s: float) -> None:
        """Until something is announced, ``stop`` or ``timeout_s``."""

    def close(self) -> None: ...


def waker_for(sessions: sessionmaker[Session], idle_s: float) -> Waker:
    """PostgreSQL: LISTEN for the ingest's NOTIFY; SQLite: ask the file every ``idle_s``
    whether anyone committed (``PRAGMA data_version``); otherwise read every ``idle_s``."""
    engine = sessions.kw.get("bind")
    if engine is None or engine.dialect.name not in ("postgresql", "sqlite"):
        return _Sleeper(idle_s)
    return _Reconnecting(engine, idle_s)


def _open_waker(engine: Engine, idle_s: float) -> Waker:
    raw = engine.raw_connection()
    raw.detach()  # its own for good: closed, not returned to the pool, at the end
    connection = raw.dbapi_connection
    if engine.dialect.name == "postgresql":
        return LedgerListener(connection)
    return _CommitWatch(connection, idle_s)


class _Reconnecting:
    """A waker on a connection of its own, opened on first use and again after the database
    dropped it; until then the relay reads every ``idle_s``, as an outage must not stop it."""

    def __init__(self, engine: Engine, idle_s: float) -> None:
        self.engine, self.idle_s = engine, idle_s
        self.errors: tuple[type[BaseException], ...] = (
            *OUTAGES,
            OSError,  # its socket closed under a select()
            engine.dialect.loaded_dbapi.Error,
        )
        self.inner: Waker | None = None
        self.lost = False

    def _use(self, call: Callable[[Waker], None]) -> bool:
        try:
            if self.inner is None:
                self.inner = _open_waker(self.engine, self.idle_s)
            call(self.inner)
        except self.errors:
            if not self.lost:
                log.warning("relay.waker_lost", exc_info=True)
            self.lost = True
            self.close()
            return False
        self.lost = False
        return True

    def drain(self) -> None:
        self._use(lambda waker: waker.drain())

    def wait(self, stop: threading.Event, timeout_s: float) -> None:
        if not self._use(lambda waker: waker.wait(stop, timeout_s)):
            stop.wait(min(self.idle_s, timeout_s))

    def close(self) -> None:
        inner, self.inner = self.inner, None
        if inner is not None:
            with contextlib.suppress(*self.errors):
                inner.close()


class _Sleeper:
    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s

    def drain(self) -> None:
        pass

    def wait(self, stop: threading.Event, timeout_s: float) -> None:
        stop.wait(min(self.idle_s, timeout_s))

    def close(self) -> None:
        pass


class _CommitWatch:
    """SQLite: ``PRAGMA data_version`` changes when another connection commits; asking costs
    microseconds, where reading the ledger costs a session and a query."""

    def __init__(self, connection: Any, idle_s: float) -> None:
        self.connection, self.idle_s = connection, idle_s
        self.version = self._version()

    def _version(self) -> int:
        return int(self.connection.execute("PRAGMA data_version").fetchone()[0])

    def drain(self) -> None:
        self.version = self._version()

    def wait(self, stop: threading.Event, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not stop.wait(self.idle_s):
            if self._version() != self.version or time.monotonic() >= deadline:
                return

    def close(self) -> None:
        self.connection.close()


class LedgerListener:
    """PostgreSQL: LISTEN on ``LEDGER_CHANNEL``, which the ingest NOTIFYs as it commits."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection  # a psycopg2 connection of its own
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"LISTEN {LEDGER_CHANNEL}")

    def drain(self) -> None:
        self.connection.poll()
        self.connection.notifies.clear()

    def wait(self, stop: threading.Event, timeout_s: float, slice_s: float = 0.1) -> None:
        """Looking at ``stop`` every ``slice_s``."""
        deadline = time.monotonic() + timeout_s
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            readable, _, _ = select.select([self.connection], [], [], min(left, slice_s))
            if readable:
                self.connection.poll()
                if self.connection.notifies:
                    return

    def close(self) -> None:
        self.connection.close()
