"""The consumer process's metrics: records in and out, batch time, lag and dead letters of the
consumer worker; nudges by status (read from the database); sender calls by provider and
result. Updated by consumers/runner.py and consumers/dispatch.py (docs/stream-stage.md,
"Metrics and health")."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from infra.db import Nudge

NUDGE_STATUSES = ("pending", "held", "sending", "sent", "failed", "ambiguous", "skipped")
"""A nudge's states (consumers/dispatch.py); each is reported, 0 when none is in it."""
NUDGES_EVERY_S = 5.0
"""How often the consumer process reads the nudges' statuses for ``engage_nudges``."""

RECORDS_IN = Counter(
    "engage_consumers_records_in", "Records fetched by the consumer worker.", ["topic"]
)
RECORDS_OUT = Counter(
    "engage_consumers_records_out",
    "Records the consumer worker published (dead letters).",
    ["topic"],
)
STORED = Counter(
    "engage_consumers_stored",
    "Rows stored from the topics (a repeat or a superseded score is not counted).",
    ["table"],
)
BATCH_SECONDS = Histogram(
    "engage_consumers_batch_seconds",
    "Time to store a fetched batch, publish its dead letters and commit.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
LAG = Gauge(
    "engage_consumers_lag_records",
    "Records of an assigned partition not yet stored: the fetch high watermark the consumer "
    "saw, less its position.",
    ["topic", "partition"],
)
DEAD_LETTERS = Counter(
    "engage_consumers_dead_letters",
    "Records dead-lettered, by topic and reason class (ValidationError, unstorable).",
    ["topic", "reason"],
)
NUDGES = Gauge(
    "engage_nudges",
    "Nudges in each status, read from the database every few seconds (every consumer "
    "process reports the same numbers: aggregate with max, not sum).",
    ["status"],
)
SENDER_CALLS = Counter(
    "engage_sender_calls",
    "Messages handed to a sender, by provider (sendgrid, twilio, or outbox when no provider "
    "is configured) and result (sent, retryable, refused, ambiguous).",
    ["provider", "result"],
)
SENDER_SECONDS = Histogram(
    "engage_sender_call_seconds",
    "Time of a provider's send call.",
    ["provider"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


def nudge_counts(session: Session) -> dict[str, int]:
    """How many nudges are in each status (every known status, 0 when empty)."""
    counts = dict.fromkeys(NUDGE_STATUSES, 0)
    rows = session.execute(select(Nudge.status, func.count()).group_by(Nudge.status))
    counts.update({status: int(count) for status, count in rows})
    return counts


def refresh_nudges(sessions: sessionmaker[Session]) -> dict[str, int]:
    """Read the nudges' statuses into ``engage_nudges``; what was read."""
    with sessions() as session:
        counts = nudge_counts(session)
    for status, count in counts.items():
        NUDGES.labels(status).set(count)
    return counts
