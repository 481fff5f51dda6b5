"""SQLite's one write lock, taken by the application with short, even waits.

The sqlite3 module opens a transaction (``BEGIN``) just before the first INSERT, UPDATE,
DELETE or REPLACE that is outside one, and SQLite's busy handler makes a writer that finds the
lock taken sleep 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50 and then 100 ms between tries: under
load a queued writer wakes long after the lock came free (docs/stream-stage.md, "Latency hop
by hop"). Here the driver is put in autocommit (``isolation_level = None``) and, at the same
point the driver would begin, the application runs ``BEGIN IMMEDIATE`` with SQLite's own busy
wait off, trying again every 1-2 ms (with jitter, so that waiting processes do not retry in
step) until ``timeout_s``. Everything else is as before: reads outside a write transaction are
in autocommit, a statement after the first write runs inside its transaction, SQLAlchemy's
commit and rollback end it, and a SAVEPOINT outside a transaction still opens a deferred one.

``engage_sqlite_lock_wait_seconds`` and ``engage_sqlite_lock_held_seconds`` (each process's
/metrics) time the waits and the write transactions (from the lock to COMMIT or ROLLBACK).
"""

from __future__ import annotations

import random
import sqlite3
import time
from typing import Any

from prometheus_client import Histogram
from sqlalchemy import Engine, event

WRITES = ("INSERT", "UPDATE", "DELETE", "REPLAC")
"""The first six letters of the statements the sqlite3 module begins a transaction before."""
RETRY_S = (0.001, 0.002)
"""The range of the wait between two tries of the lock, in seconds."""
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
LOCK_WAIT = Histogram(
    "engage_sqlite_lock_wait_seconds",
    "Time a write transaction waited for SQLite's write lock (BEGIN IMMEDIATE).",
    buckets=_BUCKETS,
)
LOCK_HELD = Histogram(
    "engage_sqlite_lock_held_seconds",
    "Time SQLite's write lock was held: BEGIN IMMEDIATE to COMMIT or ROLLBACK.",
    buckets=_BUCKETS,
)
_TAKEN_AT = "engage_lock_taken_at"
"""Where a connection's ``info`` keeps when its write lock was taken (perf_counter)."""


def take_write_lock(connection: sqlite3.Connection, timeout_s: float) -> float:
    """``BEGIN IMMEDIATE`` on ``connection`` (in autocommit), tried every 1-2 ms until it
    succeeds or ``timeout_s`` has passed (then SQLite's "database is locked" is raised);
    returns the seconds waited. The connection's busy timeout is restored afterwards."""
    started = time.perf_counter()
    (busy_ms,) = connection.execute("PRAGMA busy_timeout").fetchone()
    connection.execute("PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                connection.execute("BEGIN IMMEDIATE")
                return time.perf_counter() - started
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.perf_counter() - started >= timeout_s:
                    raise
            time.sleep(random.uniform(*RETRY_S))
    finally:
        connection.execute(f"PRAGMA busy_timeout={int(busy_ms)}")


def lock_writes_early(engine: Engine, timeout_s: float = 30.0) -> None:
    """Make ``engine`` (SQLite, the sqlite3 driver) take the write lock itself, as above."""

    @event.listens_for(engine, "connect")
    def _autocommit(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "before_cursor_execute")
    def _begin(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        dbapi_connection = cursor.connection
        if dbapi_connection.in_transaction or statement.lstrip()[:6].upper() not in WRITES:
            return
        LOCK_WAIT.observe(take_write_lock(dbapi_connection, timeout_s))
        conn.info[_TAKEN_AT] = time.perf_counter()

    def _released(conn: Any) -> None:
        taken = conn.info.pop(_TAKEN_AT, None)
        if taken is not None:
            LOCK_HELD.observe(time.perf_counter() - taken)

    event.listen(engine, "commit", _released)
    event.listen(engine, "rollback", _released)
