"""Why a supporter's score, rung and nudges are what they are: `engage explain` and its API.

The supporter's events are read from the ledger (the database copy of the log, in the order
the stream folds them) and folded by the stream's own ``Engine`` with a trace: the numbers are
computed by the same code as the stream's, not by a description of it.
"""

from __future__ import annotations

import secrets
import time
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from infra.db import LedgerEvent, SupporterAlias, epoch_millis
from infra.http import problem
from schemas.catalogue import INPUT_TOPICS
from schemas.events import INPUT_EVENT_TYPES, Event
from streams.engagement import Engine
from streams.replay import in_fold_order


class UnknownSupporter(LookupError):
    pass


def history(session: Session, supporter_id: str) -> tuple[str, list[tuple[Event, float | None]]]:
    """The id the supporter's events are kept under now (after any merge) and those events,
    each with the time it was accepted."""
    alias = session.get(SupporterAlias, supporter_id)
    current = alias.survivor_id if alias is not None else supporter_id
    rows = session.execute(
        select(LedgerEvent.topic, LedgerEvent.payload, LedgerEvent.accepted_at)
        .where(LedgerEvent.key == current, LedgerEvent.topic.in_(INPUT_TOPICS))
        .order_by(LedgerEvent.accepted_at, LedgerEvent.seq)
    ).all()
    if not rows:
        raise UnknownSupporter(supporter_id)
    records = [(topic, payload, epoch_millis(at) / 1000) for topic, payload, at in rows]
    return current, [
        (INPUT_EVENT_TYPES[topic].model_validate_json(payload), arrived)
        for topic, payload, arrived in in_fold_order(records)
    ]


def explain(
    sessions: sessionmaker[Session], engine: Engine, supporter_id: str, now: float | None = None
) -> dict[str, Any]:
    with sessions() as session:
        current, events = history(session, supporter_id)
    result = engine.explain(current, events, time.time() if now is None else now)
    if current != supporter_id:
        result["merged_from"] = supporter_id
    return result


def render(result: dict[str, Any]) -> str:
    """The explanation as text for a terminal."""
    lines = [result["supporter_id"]]
    if result.get("merged_from"):
        lines[0] += f" (asked about {result['merged_from']}, merged into this one)"
    lines.append(
        f"score {result['score']:.2f} as of {_day(result['as_of'])} "
        f"(each action's points halve every {result['half_life_days']:g} days)"
    )
    lines.append(f"rung {result['rung']}")
    lines += [f"  {why}" for why in result["rung_why"]]
    lines.append(f"consent: {', '.join(result['consent']) or 'none'}")
    lines.append("\nwhat the score is made of:")
    for c in result["contributions"]:
        lines.append(
            f"  {_day(c['at'])}  {c['kind']:<18} {c['weight']:>6g} x {c['decay']:.3f}"
            f" = {c['points']:>7.2f}"
        )
    lines.append(f"  {'':<10}  {'total':<18} {'':>6}   {'':5}   {result['score']:>7.2f}")
    lines.append("\nevents, in the order they arrived, and the rules they set off:")
    for e in result["events"]:
        after = f" -> score {e['score']:.2f}, {e['rung']}" if e["score"] is not None else ""
        lines.append(f"  {_day(e['at'])}  {e['kind']:<18} {e['outcome']}{after}")
        for r in e["rules"]:
            key = f" [{r['output_id']}]" if r["output_id"] else ""
            lines.append(f"      {r['rule']}: {r['decision']}, {r['reason']}{key}")
    for refused in result["refused"]:
        lines.append(f"  refused {refused['event_id']}: {refused['reason']}")
    if result["timers"]:
        lines.append("\ntimers (no activity):")
        for t in result["timers"]:
            state = "fired for this quiet spell" if t["fired_for_this_quiet_spell"] else "waiting"
            lines.append(
                f"  {t['rule']}: after {t['after_days_quiet']} quiet days, "
                f"due {_day(t['due'])}, {state}"
            )
    return "\n".join(lines)


def _day(iso: str | None) -> str:
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d") if iso else "-"


def explain_router(sessions: sessionmaker[Session], engine: Engine, token: str) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["explain"])

    @router.get(
        "/supporters/{supporter_id}/explain",
        summary="Why a supporter's score, rung and nudges are what they are",
        responses={
            401: {"description": "Missing or wrong bearer token."},
            404: {"description": "No events for this supporter."},
        },
    )
    async def explain_supporter(supporter_id: str, request: Request) -> JSONResponse:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), token.encode()):
            return problem(401, "authorization", "a valid bearer token is required")
        try:
            result = await run_in_threadpool(explain, sessions, engine, supporter_id)
        except UnknownSupporter:
            return problem(404, "supporter_id", "no events for this supporter")
        return JSONResponse(result)

    return router
