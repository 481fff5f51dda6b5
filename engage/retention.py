"""Retention: `engage retention apply`, and `engage up` on a schedule (docs/privacy.md).

One transaction composes the owners' parts, from the periods in the settings:
``producers.retention`` restates on the log each consent still relied on whose event is about
to go, then deletes the ledger rows past their topic's retention, the webhook receipts and the
re-driven dead letters' notes; ``consumers.retention`` deletes the nudges, outbox copies,
tasks and scores that nothing left in the log derives; ``infra.consent`` deletes superseded
consent records. A dry run does it all and rolls back, so its counts are exact.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from consumers import retention as consumers_part
from infra.consent import forget_superseded_consents
from infra.settings import Settings
from producers import retention as producers_part


class RetentionResult(BaseModel):
    """What one application of retention did (or, dry, would do)."""

    applied_at: datetime
    dry_run: bool
    cutoffs: dict[str, datetime] = Field(
        description="Per topic and table: what is older goes (absent: kept forever)."
    )
    rows: dict[str, int] = Field(
        description="Rows deleted per table; consent_restated: consents restated on the log."
    )
    log: dict[str, int] = Field(
        description="Ledger rows deleted per topic: the records gone from the log."
    )
    seconds: float


def _before(now: datetime, days: int | None) -> datetime | None:
    return now - timedelta(days=days) if days else None


def apply_retention(
    sessions: sessionmaker[Session],
    settings: Settings,
    now: datetime | None = None,
    dry_run: bool = False,
) -> RetentionResult:
    """Delete what is past retention as of ``now``, in one transaction (rolled back when
    ``dry_run``)."""
    now = now or datetime.now(UTC)
    started = time.perf_counter()
    topics = {
        spec.name: cutoff
        for spec in settings.topics()
        if (cutoff := _before(now, spec.retention_days)) is not None
    }
    tables = {
        "nudges": _before(now, settings.retention_nudges_days),
        "outbox": _before(now, settings.retention_outbox_days),
        "tasks": _before(now, settings.retention_tasks_days),
        "supporter_scores": _before(now, settings.retention_events_days),
        "consent": _before(now, settings.retention_consent_days),
        "webhook_receipts": _before(now, settings.retention_webhook_receipts_days),
        "deadletter_redrives": _before(now, settings.retention_deadletter_days),
    }
    events_before = _before(now, settings.retention_events_days)
    with sessions() as session:
        transaction = session.begin()
        try:
            restated = (
                producers_part.restate_consents(session, events_before, now) if events_before else 0
            )
            log = producers_part.forget_events(session, topics)
            rows = {
                "consent_restated": restated,
                "ledger": sum(log.values()),
                **consumers_part.forget_outputs(
                    session,
                    nudges_before=tables["nudges"],
                    outbox_before=tables["outbox"],
                    tasks_before=tables["tasks"],
                    scores_before=tables["supporter_scores"],
                    event_in_log=producers_part.event_in_log,
                    supporter_in_log=producers_part.supporter_in_log,
                ),
                **_ingest_side_tables(session, tables),
            }
        except BaseException:
            transaction.rollback()
            raise
        if dry_run:
            transaction.rollback()
        else:
            transaction.commit()
    return RetentionResult(
        applied_at=now,
        dry_run=dry_run,
        cutoffs={
            **topics,
            **{table: cutoff for table, cutoff in tables.items() if cutoff is not None},
        },
        rows=rows,
        log=log,
        seconds=round(time.perf_counter() - started, 3),
    )


def _ingest_side_tables(session: Session, tables: dict[str, datetime | None]) -> dict[str, int]:
    """Superseded consent records, webhook receipts, re-driven dead letters' notes."""
    rows: dict[str, int] = {}
    if (consent := tables["consent"]) is not None:
        rows["consent"] = forget_superseded_consents(session, consent)
    if (receipts := tables["webhook_receipts"]) is not None:
        rows["webhook_receipts"] = producers_part.forget_receipts(session, receipts)
    if (redrives := tables["deadletter_redrives"]) is not None:
        rows["deadletter_redrives"] = producers_part.forget_redrives(session, redrives)
    return rows


def summary(result: RetentionResult, embedded: bool) -> str:
    """What `engage retention apply` prints."""
    verb = "would delete (dry run: nothing changed)" if result.dry_run else "deleted"
    lines = [f"retention as of {result.applied_at:%Y-%m-%d %H:%M} UTC: {verb}"]
    for table, count in result.rows.items():
        if table != "consent_restated":
            lines.append(f"  {table:<20} {count:>9}")
        if table == "ledger":
            lines += [f"    {topic:<18} {n:>9}" for topic, n in result.log.items()]
    lines.append(f"consents restated on the log: {result.rows['consent_restated']}")
    if embedded and result.log and not result.dry_run:
        lines.append(
            "a running `engage up` keeps these events in its embedded broker's memory until it\n"
            "starts again (retention on its own schedule restarts the broker itself)"
        )
    return "\n".join(lines)
