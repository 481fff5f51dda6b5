"""The /charts page's figures: SQL aggregates of the mart (no row about a person leaves the
database) and their Vega-Lite specifications, built with Altair.

Conversion: a nudge or task converts when its person takes a next step (``NEXT_STEPS``)
after it was asked for and within ``CONVERSION_DAYS`` days. Each nudge or task counts once, so
a person nudged twice by a rule counts twice. A rule's lift is the conversion of those it
nudged (or tasked) less that of its hold-out group (``consumers.mart.lift``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import Any

import altair as alt
from sqlalchemy import Date, case, distinct, exists, func, literal, literal_column, select
from sqlalchemy.orm import Session

from consumers.mart.lift import lift
from infra.db import MartEvent, MartMessage, MartSupporterDay, MartTask

NEXT_STEPS = (
    "petition.signed",
    "event.rsvp",
    "event.attended",
    "training.completed",
    "supporter.brought",
)
"""What counts as taking a next step on the ladder (a click on the message itself does not)."""
CONVERSION_DAYS = 14
"""How long after a nudge or task a next step still counts as its conversion (days)."""
MIN_AREA_PEOPLE = 5
"""An area with fewer active people is left out of "engagement by area" (counted apart)."""
AREA_WEEKS = 12
"""Engagement by area covers the mart's last this many weeks."""
TOP_AREAS = 20
"""Most areas drawn (the most active); the table under the chart lists the same."""
NO_STATUS = "no report yet"
HELD_OUT = "held out (not sent)"


@dataclass(frozen=True)
class Figure:
    """One chart: its id, title, what it shows in words, its Vega-Lite spec, and its data as
    a small table (the text alternative)."""

    id: str
    title: str
    caption: str
    spec: dict[str, Any]
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    marks: int
    """The data marks the chart draws (bars, points, rules): what a test counts."""


# --- the aggregates ----------------------------------------------------------------------


def rung_order(session: Session) -> list[str]:
    """The rungs seen, lowest first, ordered by the mean score of the days spent on them (the
    mart does not know the playbook)."""
    rows = session.execute(
        select(MartSupporterDay.rung, func.avg(MartSupporterDay.score))
        .group_by(MartSupporterDay.rung)
        .order_by(func.avg(MartSupporterDay.score), MartSupporterDay.rung)
    ).all()
    return [rung for rung, _ in rows]


def funnel_by_week(session: Session, rungs: list[str] | None = None) -> list[dict[str, Any]]:
    """How many people stood on each rung at the end of each week (Monday-start weeks, UTC):
    each person's rung is that of their last supporter day on or before the week's end.

    Counted in SQL as spans: a supporter day holds from its week until the week of the
    person's next supporter day; the weeks are then summed up from the spans' starts and ends.
    """
    t = MartSupporterDay
    following = (
        func.lead(t.week, type_=Date).over(partition_by=t.person, order_by=t.day).label("next_week")
    )
    spans = select(t.rung, t.week, following).subquery()
    rows = session.execute(
        select(spans.c.rung, spans.c.week, spans.c.next_week, func.count())
        .where(or_none_after(spans.c.week, spans.c.next_week))
        .group_by(spans.c.rung, spans.c.week, spans.c.next_week)
    ).all()
    if not rows:
        return []
    change: dict[tuple[str, date], int] = defaultdict(int)
    first = min(week for _, week, _, _ in rows)
    last = max(max(week, nxt or week) for _, week, nxt, _ in rows)
    for rung, week, next_week, count in rows:
        change[(rung, week)] += count
        if next_week is not None:
            change[(rung, next_week)] -= count
    result = []
    for rung in rung_order(session) if rungs is None else rungs:
        standing = 0
        week = first
        while week <= last:
            standing += change.get((rung, week), 0)
            if standing:
                result.append({"week": week.isoformat(), "rung": rung, "people": standing})
            week += timedelta(days=7)
    return result


def or_none_after(week: Any, next_week: Any) -> Any:
    """A span that ends in a later week (a change within the week is overtaken by it)."""
    return (next_week.is_(None)) | (next_week > week)


def engagement_by_area(session: Session) -> tuple[list[dict[str, Any]], int]:
    """Per area: the people who did anything in the last ``AREA_WEEKS`` weeks and their
    actions; areas with fewer than ``MIN_AREA_PEOPLE`` people are left out, and counted."""
    newest = session.scalar(select(func.max(MartEvent.week)))
    if newest is None:
        return [], 0
    since = newest - timedelta(weeks=AREA_WEEKS - 1)
    people = func.count(distinct(MartEvent.person))
    rows = session.execute(
        select(MartEvent.area, people, func.count())
        .where(MartEvent.week >= since, MartEvent.area.is_not(None))
        .group_by(MartEvent.area)
        .order_by(people.desc(), MartEvent.area)
    ).all()
    shown = [
        {"area": area, "people": n, "actions": actions, "per_person": round(actions / n, 1)}
        for area, n, actions in rows
        if n >= MIN_AREA_PEOPLE
    ]
    return shown[:TOP_AREAS], len(rows) - len(shown)


def nudges_by_status(session: Session) -> list[dict[str, Any]]:
    """Nudges asked for each week, by what finally became of them (their newest status; held
    out, or no report yet)."""
    m = MartMessage
    outcome = case(
        (m.holdout.is_(True), literal(HELD_OUT)),
        (m.status.is_(None), literal(NO_STATUS)),
        else_=m.status,
    ).label("outcome")
    rows = session.execute(
        select(m.requested_week, outcome, func.count())
        .where(m.requested_week.is_not(None))
        .group_by(m.requested_week, outcome)
        .order_by(m.requested_week, outcome)
    ).all()
    return [{"week": w.isoformat(), "status": s, "nudges": n} for w, s, n in rows]


def _window_end(session: Session, at: Any) -> Any:
    """``at`` + ``CONVERSION_DAYS`` days, in SQL."""
    if session.get_bind().dialect.name == "sqlite":  # UTCDateTime is 'YYYY-MM-DD HH:MM:SS.ffffff'
        shifted = func.strftime("%Y-%m-%d %H:%M:%S", at, f"+{CONVERSION_DAYS} days")
        return shifted.concat(func.substr(at, 20))
    return at + literal_column(f"INTERVAL '{CONVERSION_DAYS:d} days'")


def _converted(session: Session, person: Any, at: Any) -> Any:
    e = MartEvent
    return exists().where(
        e.person == person,
        e.type.in_(NEXT_STEPS),
        e.event_time > at,
        e.event_time <= _window_end(session, at),
    )


def conversions_by_rule(session: Session) -> list[dict[str, Any]]:
    """Per rule: nudges and tasks of the nudged and of the held out, how many converted, and
    the lift with its 95% interval. Only nudges and tasks whose request has arrived count."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for table, at in ((MartMessage, MartMessage.requested_at), (MartTask, MartTask.created_at)):
        converted = case((_converted(session, table.person, at), 1), else_=0)
        rows = session.execute(
            select(table.rule, table.holdout, func.count(), func.sum(converted))
            .where(at.is_not(None), table.rule.is_not(None))
            .group_by(table.rule, table.holdout)
        ).all()
        for rule, holdout, n, won in rows:
            c = counts[rule]
            if holdout:
                c[2] += n
                c[3] += int(won or 0)
            else:
                c[0] += n
                c[1] += int(won or 0)
    result = []
    for rule in sorted(counts):
        n, won, h, h_won = counts[rule]
        result.append({"rule": rule, **asdict(lift(won, n, h_won, h))})
    return result


# --- the figures -------------------------------------------------------------------------


WEEK_AXIS = alt.Axis(
    labelAngle=0,
    labelOverlap="greedy",
    labelSeparation=6,
    labelExpr="utcFormat(toDate(datum.value), '%-d %b')",
)
"""Weeks as "5 Jan", as many as fit without overlapping (a phone shows every few)."""


def _data(rows: list[dict[str, Any]]) -> Any:
    return alt.Data(values=rows)  # type: ignore[no-untyped-call]


def _base(rows: list[dict[str, Any]], description: str) -> alt.Chart:
    return alt.Chart(_data(rows), description=description).properties(width="container", height=260)


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.1f}%"


def _points(value: float | None) -> str:
    return "" if value is None else f"{value * 100:+.1f}"


def _interval(rule: dict[str, Any]) -> str:
    if rule["low"] is not None:
        return f"{_points(rule['low'])} to {_points(rule['high'])}"
    return "no hold-out group" if not rule["held_out"] else "nobody nudged"


def figures(session: Session) -> list[Figure]:
    """The page's four charts, from the mart as it is."""
    rungs = rung_order(session)
    funnel = funnel_by_week(session, rungs)
    areas, suppressed = engagement_by_area(session)
    statuses = nudges_by_status(session)
    rules = conversions_by_rule(session)
    measured = [r for r in rules if r["lift"] is not None]
    out = []

    weeks = sorted({r["week"] for r in funnel})
    out.append(
        Figure(
            id="funnel",
            title="The ladder, week by week",
            caption=(
                f"How many people stood on each rung at the end of each week, "
                f"{len(weeks)} weeks from {weeks[0] if weeks else '-'}; lowest rung at the "
                "bottom."
                if funnel
                else "No scores in the mart yet."
            ),
            spec=_base(funnel, "People on each rung of the ladder at the end of each week")
            .mark_bar()
            .encode(
                x=alt.X("week:O", title="Week starting", axis=WEEK_AXIS),
                y=alt.Y("people:Q", title="People", stack="zero"),
                color=alt.Color(
                    "rung:N", sort=rungs, title="Rung", legend=alt.Legend(orient="bottom")
                ),
                order=alt.Order("rung_rank:Q"),
                tooltip=["week:O", "rung:N", "people:Q"],
            )
            .transform_calculate(rung_rank=f"indexof({rungs!r}, datum.rung)".replace("'", '"'))
            .to_dict(),
            columns=("Week starting", "Rung", "People"),
            rows=[(r["week"], r["rung"], r["people"]) for r in funnel],
            marks=len(funnel),
        )
    )
    out.append(
        Figure(
            id="areas",
            title="Engagement by area",
            caption=(
                f"People who did anything in the last {AREA_WEEKS} weeks, by area, and their "
                f"actions per person; {len(areas)} areas shown (the most active first, at most "
                f"{TOP_AREAS}); {suppressed} areas with fewer than {MIN_AREA_PEOPLE} people "
                "are left out so that nobody can be singled out."
                if areas or suppressed
                else "No actions with an area in the mart yet."
            ),
            spec=_base(areas, "Active people per area")
            .mark_bar()
            .encode(
                y=alt.Y("area:N", sort="-x", title=None, axis=alt.Axis(labelLimit=160)),
                x=alt.X("people:Q", title="Active people"),
                tooltip=["area:N", "people:Q", "actions:Q", "per_person:Q"],
            )
            .properties(height=max(120, 22 * len(areas)))
            .to_dict(),
            columns=("Area", "Active people", "Actions", "Actions per person"),
            rows=[(r["area"], r["people"], r["actions"], r["per_person"]) for r in areas],
            marks=len(areas),
        )
    )
    total = sum(r["nudges"] for r in statuses)
    out.append(
        Figure(
            id="nudges",
            title="Nudges sent and what became of them",
            caption=(
                f"{total} nudges asked for, by the week they were asked for and their last "
                "known status (delivered, bounced, skipped...); "
                "held-out nudges are recorded, never sent."
                if statuses
                else "No nudges in the mart yet."
            ),
            spec=_base(statuses, "Nudges per week by final status")
            .mark_bar()
            .encode(
                x=alt.X("week:O", title="Week starting", axis=WEEK_AXIS),
                y=alt.Y("nudges:Q", title="Nudges", stack="zero"),
                color=alt.Color("status:N", title="Status", legend=alt.Legend(orient="bottom")),
                tooltip=["week:O", "status:N", "nudges:Q"],
            )
            .to_dict(),
            columns=("Week starting", "Status", "Nudges"),
            rows=[(r["week"], r["status"], r["nudges"]) for r in statuses],
            marks=len(statuses),
        )
    )
    lift_rows = [
        {
            "rule": r["rule"],
            "lift": round(r["lift"] * 100, 2),
            "low": round(r["low"] * 100, 2),
            "high": round(r["high"] * 100, 2),
            "nudged": r["nudged"],
            "held_out": r["held_out"],
        }
        for r in measured
    ]
    base = _base(lift_rows, "Lift of each rule with its 95% confidence interval").properties(
        height=max(120, 40 * len(lift_rows))
    )
    y = alt.Y("rule:N", title=None)
    interval = base.mark_rule(strokeWidth=3).encode(
        y=y,
        x=alt.X("low:Q", title="Lift, percentage points"),
        x2="high:Q",
    )
    point = base.mark_point(filled=True, size=90, shape="diamond").encode(
        y=y, x="lift:Q", tooltip=["rule:N", "lift:Q", "low:Q", "high:Q", "nudged:Q", "held_out:Q"]
    )
    zero = alt.Chart(_data([{"x": 0}])).mark_rule(strokeDash=[4, 4]).encode(x="x:Q")
    out.append(
        Figure(
            id="lift",
            title="Lift per playbook rule",
            caption=(
                f"Conversion: the person took a next step ({', '.join(NEXT_STEPS)}) within "
                f"{CONVERSION_DAYS} days of the nudge or task. Lift: the conversion of those "
                "nudged less that of the hold-out group, in percentage points, with its 95% "
                "confidence interval (Newcombe's hybrid score interval); an interval that "
                "crosses the dashed zero line does not show the rule works. "
                f"{len(measured)} of {len(rules)} rules have both groups."
                if rules
                else "No nudges or tasks in the mart yet."
            ),
            spec=alt.layer(zero, interval, point).properties(width="container").to_dict(),
            columns=(
                "Rule",
                "Nudged",
                "Converted",
                "Held out",
                "Converted",
                "Lift (points)",
                "95% interval",
            ),
            rows=[
                (
                    r["rule"],
                    r["nudged"],
                    _percent(r["nudged_rate"]),
                    r["held_out"],
                    _percent(r["held_out_rate"]),
                    _points(r["lift"]),
                    _interval(r),
                )
                for r in rules
            ],
            marks=len(lift_rows),
        )
    )
    return out
