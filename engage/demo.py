"""`engage demo`: start the pipeline, simulate traffic, and show it flowing in the terminal."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from kafka import KafkaConsumer, TopicPartition
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from sqlalchemy import func, or_, select

from engage import wiring
from engage.processes import Supervisor
from infra.db import FollowUpTask, LedgerEvent, Nudge, OutboxMessage, SupporterScore
from infra.db import Group as DbGroup
from infra.db import Organiser as DbOrganiser
from infra.settings import Settings
from schemas.catalogue import TOPICS
from streams.playbook import DEFAULT_PLAYBOOK


def _mask(address: str) -> str:
    if "@" in address:
        name, _, domain = address.partition("@")
        return f"{name[:1]}***@{domain}"
    return f"{address[:4]}******{address[-2:]}"


class LiveView:
    """Tails every catalogue topic (counting messages) and reads the database's results."""

    def __init__(self, bootstrap: str, sessions: Any) -> None:
        self.sessions = sessions
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, client_id="engage-demo", enable_auto_commit=False
        )
        self.consumer.assign(
            [
                TopicPartition(spec.name, p)
                for spec in TOPICS
                for p in sorted(self.consumer.partitions_for_topic(spec.name) or ())
            ]
        )
        self.counts: dict[str, int] = {spec.name: 0 for spec in TOPICS}
        self.rungs: deque[str] = deque(maxlen=6)

    def poll(self) -> None:
        for tp, records in self.consumer.poll(timeout_ms=200, max_records=100_000).items():
            self.counts[tp.topic] += len(records)
            if tp.topic == "engagement.scored":
                for record in records:
                    scored = json.loads(record.value)
                    if scored["rung"] != scored["previous_rung"] and scored["previous_rung"]:
                        self.rungs.append(
                            f"{scored['supporter_id'][:12]}… {scored['previous_rung']} → "
                            f"{scored['rung']} (score {scored['score']:.1f})"
                        )

    def snapshot(self) -> dict[str, Any]:
        with self.sessions() as session:
            nudges = dict(
                session.execute(select(Nudge.status, func.count()).group_by(Nudge.status)).all()
            )
            outbox = session.scalars(
                select(OutboxMessage).order_by(OutboxMessage.id.desc()).limit(6)
            ).all()
            tasks = session.scalars(
                select(FollowUpTask).order_by(FollowUpTask.created_at.desc()).limit(5)
            ).all()
            unpublished = session.scalar(
                select(func.count()).select_from(LedgerEvent).where(~LedgerEvent.published)
            )
            task_count = session.scalar(select(func.count()).select_from(FollowUpTask))
        return {
            "nudges": nudges,
            "outbox": [
                (m.channel, _mask(m.to_address), (m.subject or m.body)[:60]) for m in outbox
            ],
            "tasks": [(t.due_at.strftime("%d %b %H:%M"), t.area or "-", t.kind) for t in tasks],
            "unpublished": unpublished or 0,
            "task_count": task_count or 0,
        }

    def render(self, snap: dict[str, Any], simulated: str) -> Group:
        topics = Table(title="Kafka topics (messages)", expand=False)
        topics.add_column("topic")
        topics.add_column("messages", justify="right")
        for name, count in self.counts.items():
            topics.add_row(name, str(count))
        outbox = Table(title="Outbox: nudges sent (embedded mode, no provider keys)")
        for column in ("channel", "to", "subject / text"):
            outbox.add_column(column)
        for row in snap["outbox"]:
            outbox.add_row(*row)
        tasks = Table(title=f"Organiser follow-up tasks ({snap['task_count']})")
        for column in ("due", "area", "kind"):
            tasks.add_column(column)
        for row in snap["tasks"]:
            tasks.add_row(*row)
        ladder = Table(title="Ladder moves (from engagement.scored)")
        ladder.add_column("supporter: rung change")
        for line in self.rungs:
            ladder.add_row(line)
        nudges = ", ".join(f"{k}: {v}" for k, v in sorted(snap["nudges"].items())) or "none yet"
        return Group(simulated, f"Nudges by state: {nudges}", topics, ladder, outbox, tasks)

    def close(self) -> None:
        self.consumer.close()


def _explain_top_supporter(
    console: Console, settings: Settings, supervisor: Supervisor, engage: str
) -> None:
    """The ladder's head count and `engage explain` for the highest-scoring supporter."""

    from consumers.repository import top_scores
    from infra.db import SupporterScore
    from streams.explain import explain, render

    with supervisor.sessions() as session:
        rungs = dict(
            session.execute(
                select(SupporterScore.rung, func.count()).group_by(SupporterScore.rung)
            ).all()
        )
        top = top_scores(session, 1)
    engine = wiring.engine(settings)
    ladder = ", ".join(f"{name} {rungs.get(name, 0)}" for name in engine.playbook.rung_names)
    console.print(f"  the ladder now: {ladder}")
    if not top:
        return
    sid = top[0]["supporter_id"]
    # As the user can type it: `engage` when it is on PATH, else the script's own path.
    console.print(f"\n[bold]Why the top scorer is where they are[/bold] ({engage} explain {sid})")
    text = render(explain(supervisor.sessions, engine, sid))
    console.print(text, markup=False, highlight=False)


def run_demo(settings: Settings, supporters: int, seconds: float, seed: int) -> int:
    from producers.client import IngestClient
    from producers.simulator import simulate

    console = Console()
    settings, quiet_note = _demo_quiet_hours(settings, datetime.now(UTC))
    settings, holdout_note = _demo_holdouts(settings)
    supervisor = Supervisor(settings)
    console.print("[bold]Starting the pipeline on the embedded broker…[/bold]")
    report: dict[str, Any] = {}

    def traffic() -> None:
        with IngestClient(supervisor.api_url, settings.secret("api_token")) as client:
            result = simulate(
                client,
                supporters,
                seed,
                batch_size=50,
                rate=max(supporters / 5, 50),
                progress=False,
                start=datetime.now(UTC) - timedelta(days=28),
            )
        report["result"] = result

    for note in (quiet_note, holdout_note):
        if note:
            console.print(note)
    sender = threading.Thread(target=traffic, name="simulate", daemon=True)
    view: LiveView | None = None
    snap: dict[str, Any] = {}
    final: FinalCounts | None = None
    organisers: list[DemoOrganiser] = []
    try:
        supervisor.start()
        console.print(f"API {supervisor.api_url} (docs at /docs), broker {supervisor.bootstrap}")
        organisers = _demo_organisers(supervisor)
        console.print(
            f"Organisers' queue: {supervisor.api_url}/ (sign in as {organisers[0].organiser_id},"
            f" password {organisers[0].password})"
        )
        view = LiveView(supervisor.bootstrap, supervisor.sessions)
        started = time.monotonic()
        sender.start()
        quiet = 0
        with Live(console=console, refresh_per_second=2) as live:
            while time.monotonic() - started < seconds:
                supervisor.check()
                view.poll()
                snap = view.snapshot()
                done = "result" in report
                status = (
                    f"Simulating {supporters} supporters over 28 days: "
                    + ("all events sent" if done else "sending…")
                    + f"  ({time.monotonic() - started:.0f}s)"
                )
                live.update(view.render(snap, status))
                settled = (
                    done and snap["unpublished"] == 0 and snap["nudges"].get("pending", 0) == 0
                )
                quiet = quiet + 1 if settled else 0
                if quiet >= 8 and snap["outbox"]:
                    break
                time.sleep(0.5)
        # Off a terminal, rich leaves Live's last frame without its newline: end the line, or
        # the next title is printed on the frame's bottom border.
        console.line()
        if snap:
            _opt_outs_then_reimport(console, settings, supervisor)
            final = _count_when_drained(supervisor)
            console.print(_decisions_table(final))
    finally:
        if view is not None:
            view.close()
        supervisor.stop()
    result = report.get("result")
    console.print("\n[bold]Summary[/bold]")
    if result is not None:
        console.print(
            f"  events sent {result.sent}, accepted {result.accepted}, "
            f"rejected {result.rejected}, in {result.seconds:.1f}s"
        )
    if final is not None:  # the same count as the table above: one moment, after draining
        console.print(f"  {final.summary()}")
        _print_queues(console, supervisor)
    engage = "engage" if shutil.which("engage") else os.path.relpath(sys.argv[0])
    _explain_top_supporter(console, settings, supervisor, engage)
    console.print("\n[bold]The organisers' queue[/bold]")
    console.print(f"  {engage} up, then open {settings.public_url}/ on a phone or a laptop:")
    for person in organisers:
        console.print(f"    {person.organiser_id}  password {person.password}  ({person.what})")
    console.print("\n[bold]Where to look next[/bold]")
    for line in (
        f"{engage} outbox      the emails and texts that were 'sent' (add --json)",
        f"{engage} nudges --status held,skipped   what was held or not sent, and why",
        f"{engage} tasks       the organisers' follow-up queue (add --json)",
        f"{engage} scores      the highest engagement scores and their rungs",
        f"{engage} explain ID  why a supporter's score, rung and nudges are what they are",
        f"{engage} replay      fold the whole log again: same scores, no new nudge or task",
        f"{engage} playbook check FILE   validate an edited playbook (ENGAGE_PLAYBOOK)",
        f"{engage} up          keep the pipeline running; API docs at <api>/docs",
        f"{engage} simulate --supporters 500   more traffic into a running pipeline",
        f"{engage} status      topics, message counts and consumer lag",
        f"{engage} up, then {settings.public_url}/charts   the analysts' charts: the ladder"
        " week by week, nudges and what became of them, each rule's lift over its hold-out group",
        f"{engage} mart export --format parquet   the analysts' mart, a file per table",
        f"{supervisor.logs}/   each process's log",
    ):
        console.print(f"  {line}")
    return 0


DEMO_GROUPS = {"hackney": "Hackney", "manchester": "Manchester"}
"""The demo's two local groups, each owning its simulated area's postcode districts; the
other areas' tasks go to the national queue."""


@dataclass(frozen=True)
class DemoOrganiser:
    organiser_id: str
    password: str
    what: str


def _demo_organisers(supervisor: Supervisor) -> list[DemoOrganiser]:
    """Two groups and their organisers (a lead of each, and an admin), made once per home;
    every demo gives them new passwords, printed for the person trying it."""
    from consumers.organising.directory import add_group, add_organiser, set_password
    from producers.simulator import AREAS

    now = datetime.now(UTC)
    people = [
        DemoOrganiser("demo-hackney", secrets.token_urlsafe(9), "leads the Hackney group"),
        DemoOrganiser("demo-manchester", secrets.token_urlsafe(9), "leads the Manchester group"),
        DemoOrganiser("demo-admin", secrets.token_urlsafe(9), "admin: the national queue"),
    ]
    with supervisor.sessions.begin() as session:
        for group_id, area in DEMO_GROUPS.items():
            if session.get(DbGroup, group_id) is None:
                (districts,) = [a.outward_codes for a in AREAS if a.name == area]
                add_group(session, group_id, f"{area} organisers", districts, now)
        for person, group in zip(people, [*DEMO_GROUPS, None], strict=True):
            if session.get(DbOrganiser, person.organiser_id) is None:
                add_organiser(
                    session,
                    person.organiser_id,
                    person.organiser_id.replace("-", " ").title(),
                    [group] if group else [],
                    now,
                    leads=[group] if group else [],
                    is_admin=group is None,
                )
            set_password(session, person.organiser_id, person.password, now)
    return people


def _print_queues(console: Console, supervisor: Supervisor) -> None:
    from consumers.organising.directory import list_groups, national_summary

    with supervisor.sessions() as session:
        groups = list_groups(session)
        national = national_summary(session)
    parts = [f"{g.group_id} {g.open_tasks}" for g in groups]
    console.print(f"  open follow-ups by queue: {', '.join(parts)}, national {national.open_tasks}")


def _demo_quiet_hours(settings: Settings, now: datetime) -> tuple[Settings, str | None]:
    """By day the texts' 21:00-09:00 quiet hours would hide nothing: unless
    ENGAGE_SMS_QUIET_HOURS is set, the demo runs with the current London hour quiet (settings
    the supervisor hands its children), and says so."""
    if "sms_quiet_hours" in settings.model_fields_set:
        return settings, None
    hour = now.astimezone(ZoneInfo("Europe/London")).hour
    if hour >= 21 or hour < 9:
        return settings, None
    window = f"{hour:02d}:00-{(hour + 2) % 24:02d}:00"
    note = (
        f"For this demo texts are quiet {window} London time, so some are held "
        "(the default is 21:00-09:00; ENGAGE_SMS_QUIET_HOURS sets it)."
    )
    return settings.model_copy(update={"sms_quiet_hours": window}), note


DEMO_HOLDOUTS = {"welcome": 20, "first-meeting-follow-up": 20, "invite-signer": 20}
"""Hold-out percentages the demo gives rules, so that /charts has nudged and held-out people
to compare after a few hundred simulated supporters (the default playbook holds out 10% of
one rule, which a demo's numbers rarely reach)."""


def _demo_holdouts(settings: Settings) -> tuple[Settings, str | None]:
    """Unless ENGAGE_PLAYBOOK is set, the demo runs the default playbook with larger hold-out
    groups (``DEMO_HOLDOUTS``), written to ``demo-playbook.yaml`` in its home, and says so."""
    if settings.playbook is not None:
        return settings, None
    document = yaml.safe_load(DEFAULT_PLAYBOOK.read_text())
    for rule in document["rules"]:
        if rule["name"] in DEMO_HOLDOUTS:
            rule["holdout_percent"] = DEMO_HOLDOUTS[rule["name"]]
    path = settings.home / "demo-playbook.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    held = ", ".join(f"{name} {percent}%" for name, percent in DEMO_HOLDOUTS.items())
    note = (
        f"For this demo the default playbook holds out more people ({held}; {path}), so the"
        " charts can compare nudged and held-out supporters (ENGAGE_PLAYBOOK sets the playbook)."
    )
    return settings.model_copy(update={"playbook": path}), note


def _opt_outs_then_reimport(console: Console, settings: Settings, supervisor: Supervisor) -> None:
    """Three people click the unsubscribe link in their email; then a sign-in sheet with them
    on it is imported, consent boxes ticked: their thank-you emails are suppressed."""
    import httpx

    from producers.client import IngestClient

    with supervisor.sessions() as session:
        # People who never came to a meeting: the imported sheet is their first.
        emails = session.scalars(
            select(OutboxMessage)
            .join(Nudge, Nudge.nudge_id == OutboxMessage.nudge_id)
            .join(SupporterScore, SupporterScore.supporter_id == Nudge.supporter_id)
            .where(
                OutboxMessage.channel == "email",
                SupporterScore.rung.in_(("supporter", "signer")),
            )
            .limit(3)
        ).all()
        owners = dict(
            session.execute(
                select(Nudge.nudge_id, Nudge.supporter_id).where(
                    Nudge.nudge_id.in_([m.nudge_id for m in emails])
                )
            ).all()
        )
    links = [
        (owners[m.nudge_id], m.to_address, re.search(r"(http://\S+/unsubscribe/\S+)", m.body))
        for m in emails
    ]
    people = [(sid, address, match.group(1)) for sid, address, match in links if match]
    if not people:
        return
    for _, _, link in people:
        httpx.post(link, timeout=10).raise_for_status()
    # The stream orders consent changes by the second, a withdrawal first on a tie.
    time.sleep(1.1)
    now = datetime.now(UTC)
    regrants = [
        {
            "type": "consent.changed",
            "event_time": now.isoformat(),
            "supporter_id": sid,
            "channel": "email",
            "granted": True,
            "source": "csv_import",
        }
        for sid, _, _ in people
    ]
    sheet: list[dict[str, Any]] = []
    for _, address, _ in people:
        sheet.append(
            {
                "type": "event.attended",
                "event_time": now.isoformat(),
                "email": address,
                "meeting_id": "demo-reimport",
                "meeting_title": "Re-imported sign-in sheet",
            }
        )
    # Two newcomers have a busy day: they join, miss the morning meeting they said they would
    # come to, and come to the evening one. Three emails are due; the cap is two a day.
    for n in (1, 2):
        newcomer = {"email": f"busy.day.{n}@example.org", "first_name": f"Sam{n}"}
        morning, evening = now - timedelta(hours=3), now - timedelta(minutes=5)
        sheet += [
            {
                "type": "supporter.signup",
                "event_time": (morning - timedelta(hours=1)).isoformat(),
                "consent_email": True,
                "source": "demo",
                **newcomer,
            },
            {
                "type": "event.no_show",
                "event_time": morning.isoformat(),
                "meeting_id": "demo-morning",
                **newcomer,
            },
            {
                "type": "event.attended",
                "event_time": evening.isoformat(),
                "meeting_id": "demo-evening",
                **newcomer,
            },
        ]
    with IngestClient(supervisor.api_url, settings.secret("api_token")) as client:
        client.post_batch(regrants)  # accepted first, so folded before the sheet
        client.post_batch(sheet)
    console.print(
        f"\n{len(people)} people unsubscribed by their email's link; then a sign-in sheet "
        "with them on it was imported, consent ticked again. Two newcomers had a busy day."
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with supervisor.sessions() as session:
            waiting = session.scalar(
                select(func.count())
                .select_from(Nudge)
                .where(Nudge.status.in_(("pending", "sending")))
            )
            decided = session.scalar(
                select(func.count())
                .select_from(Nudge)
                .where(Nudge.reason_code.in_(("suppressed", "cap_day")))
            )
        if decided and decided >= len(people) + 2 and not waiting:
            break
        time.sleep(0.5)


@dataclass(frozen=True)
class FinalCounts:
    """What became of the nudges, and how many tasks there are, counted once."""

    decisions: list[tuple[str, str | None, int, str | None]]
    """(status, reason code, nudges, one reason in words), by status then code."""
    tasks: int

    def by_status(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for status, _, count, _ in self.decisions:
            totals[status] = totals.get(status, 0) + count
        return totals

    def summary(self) -> str:
        states = ", ".join(f"{k} {v}" for k, v in sorted(self.by_status().items())) or "none"
        return f"nudges: {states}; follow-up tasks: {self.tasks}"


def count_outcomes(sessions: Any) -> FinalCounts:
    """Nudges by status and reason, and the task count, in one read transaction."""
    with sessions() as session:
        rows = session.execute(
            select(Nudge.status, Nudge.reason_code, func.count(), func.max(Nudge.reason))
            .group_by(Nudge.status, Nudge.reason_code)
            .order_by(Nudge.status, Nudge.reason_code)
        ).all()
        tasks = session.scalar(select(func.count()).select_from(FollowUpTask)) or 0
    return FinalCounts([(r[0], r[1], r[2], r[3]) for r in rows], tasks)


def _count_when_drained(supervisor: Supervisor, timeout_s: float = 30.0) -> FinalCounts:
    """Count once the pipeline has drained: the ledger all published, no nudge being sent or
    due, and two reads a second apart that agree (or the timeout passed)."""
    previous: FinalCounts | None = None
    deadline = time.monotonic() + timeout_s
    while True:
        with supervisor.sessions() as session:
            unpublished = session.scalar(
                select(func.count()).select_from(LedgerEvent).where(~LedgerEvent.published)
            )
            busy = session.scalar(
                select(func.count())
                .select_from(Nudge)
                .where(
                    Nudge.status.in_(("pending", "sending")),
                    or_(Nudge.not_before.is_(None), Nudge.not_before <= datetime.now(UTC)),
                )
            )
        counts = count_outcomes(supervisor.sessions)
        if (not unpublished and not busy and counts == previous) or time.monotonic() > deadline:
            return counts
        previous = counts
        time.sleep(1.0)


def _decisions_table(counts: FinalCounts) -> Table:
    """Nudges by what became of them and why, with one reason in words for each."""
    table = Table(title="Sending decisions (engage nudges --status held,skipped)")
    for column in ("status", "why", "nudges", "for example"):
        table.add_column(column)
    for status, code, count, reason in counts.decisions:
        table.add_row(status, code or "-", str(count), (reason or "")[:90])
    return table
