"""The per-supporter state machine: fold an event into state, return the events it causes.

``Engine`` runs a playbook: it keeps each supporter's actions (streams/scoring.py), scores
them, places the supporter on the ladder, and decides which rules fire. ``tick`` is the
timer over all states: lapse rules and rungs that fall as time passes, driven by a clock the
caller passes in (so tests can move it). ``engage explain`` runs the same fold with a
``Trace`` to say why each number is what it is.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
import sys
import uuid
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from schemas.actions import kinds_of
from schemas.catalogue import INPUT_TOPICS
from schemas.events import (
    EngagementScored,
    Event,
    IdentityMerged,
    LadderChanged,
    NudgeRequested,
    SupporterErased,
    TaskCreated,
    built,
    derived_event_id,
)
from streams.playbook import Playbook, Rule, SendAction
from streams.scoring import (
    DAY_S,
    EPOCH,
    KIND_CODE,
    Check,
    Scorer,
    View,
    all_of,
    pack,
    pack_all,
    to_datetime,
    to_packed_time,
    unpack_all,
)

MERGED = -1
"""The rung of a supporter id merged into another: its state is gone, its events ignored."""
ERASED = -2
"""The rung of an erased supporter (supporter.erased): its state is gone, its events ignored.
Every rung below zero is a supporter id the stream no longer follows."""
_LAPSE_NAMESPACE = uuid.UUID("6f1c1e52-8a8e-4c55-9d4b-2b8f3f0c7d11")


class SupporterState:
    """What the stream keeps per supporter, about 300 bytes for a typical one.

    ``actions`` and ``fired`` are packed 64-bit values (streams/scoring.py): kept actions,
    and per rule the time it last fired (rule index << 32 | seconds since 2000).
    ``latest`` is the newest action's time, ``rung`` an index into the ladder.
    Small ints and shared strings cost the slot only.
    """

    __slots__ = ("actions", "area", "fell", "fired", "lapsed", "latest", "rung")

    def __init__(self) -> None:
        self.actions = b""
        self.fired = b""
        self.latest = 0
        self.rung = 0
        self.area: str | None = None
        self.lapsed = 0  # lapse rules (shortest first) decided in the current quiet spell
        self.fell = 0  # when time last lowered the rung (seconds since 2000), if it has

    def last_fired(self, rule: int) -> int | None:
        for value in unpack_all(self.fired):
            if value >> 32 == rule:
                return value & 0xFFFFFFFF
        return None

    def record_fired(self, rule: int, t: int) -> None:
        kept = []
        for value in unpack_all(self.fired):
            if value >> 32 == rule:
                t = max(t, value & 0xFFFFFFFF)
            else:
                kept.append(value)
        kept.append(rule << 32 | t)
        self.fired = pack_all(kept)


STATE_VERSION = 1
"""The version of ``encode_state``'s layout; ``decode_state`` refuses any other."""
_STATE_HEAD = struct.Struct("<BIIbHHII")
"""version, latest, fell, rung, lapsed, then the lengths of area (UTF-8), actions and fired."""


def encode_state(state: SupporterState) -> bytes:
    """A supporter's state as bytes (snapshots): every slot, versioned; ``decode_state`` gives
    back a state that folds identically. An erased or merged supporter keeps only its rung."""
    area = state.area.encode() if state.area is not None else b""
    head = _STATE_HEAD.pack(
        STATE_VERSION,
        state.latest,
        state.fell,
        state.rung,
        state.lapsed,
        len(area) if state.area is not None else 0xFFFF,
        len(state.actions),
        len(state.fired),
    )
    return b"".join((head, area, state.actions, state.fired))


def decode_state(data: bytes) -> SupporterState:
    """The state ``encode_state`` encoded; ValueError for another version or a bad length."""
    if len(data) < _STATE_HEAD.size or data[0] != STATE_VERSION:
        raise ValueError(f"not a version {STATE_VERSION} supporter state")
    _, latest, fell, rung, lapsed, area_len, n_actions, n_fired = _STATE_HEAD.unpack_from(data)
    start = _STATE_HEAD.size
    end_area = start + (0 if area_len == 0xFFFF else area_len)
    end_actions = end_area + n_actions
    if end_actions + n_fired != len(data) or n_actions % 8 or n_fired % 8:
        raise ValueError("a supporter state of the wrong length")
    state = SupporterState()
    state.latest, state.fell, state.rung, state.lapsed = latest, fell, rung, lapsed
    state.area = None if area_len == 0xFFFF else sys.intern(data[start:end_area].decode())
    state.actions = data[end_area:end_actions]
    state.fired = data[end_actions:]
    return state


TOPIC_RANK: dict[str, int] = {topic: rank for rank, topic in enumerate(INPUT_TOPICS)}
NOT_PARSED = -1


def fold_order(arrived_ms: int, event_ms: int, topic: str, offset: int) -> tuple[int, ...]:
    """The order a supporter's events are folded in, live and in every replay: by arrival
    (the record's timestamp, which the relay sets to the ledger's acceptance time), then by
    event time (a batch posted together), then topic and offset. Scores do not depend on it;
    which rules fire does (consent from the signup, "first meeting", cooldowns)."""
    return (arrived_ms, event_ms, TOPIC_RANK[topic], offset)


class RefusedEvent(ValueError):
    """An event the engine will not fold, because of what the event says: refused, with the
    reason (the stream dead-letters it). Any other exception from the fold is a bug."""


class FutureEvent(RefusedEvent):
    """An event dated too far after it reached the log: refused, with the reason."""


_LAST_TIME = 2**32 - 1
"""The latest time the state can keep (seconds since 2000, packed in 32 bits: early 2136)."""


def _packed_time(moment: datetime) -> int:
    t = to_packed_time(moment)
    if not 0 <= t <= _LAST_TIME:
        raise RefusedEvent(
            f"event_time {moment.isoformat()} is outside the times the engine keeps "
            f"({to_datetime(0):%Y-%m-%d} to {to_datetime(_LAST_TIME):%Y-%m-%d})"
        )
    return t


Decision = Literal["fired", "held out", "suppressed"]


@dataclass
class RuleDecision:
    rule: str
    decision: Decision
    reason: str
    output_id: str | None = None


@dataclass
class TraceEntry:
    """What one event did: to the actions kept, the score, the rung, and the rules."""

    event_id: str
    kind: str
    at: datetime
    outcome: str
    score: float | None = None
    rung: str | None = None
    rules: list[RuleDecision] = field(default_factory=list)


@dataclass
class Trace:
    entries: list[TraceEntry] = field(default_factory=list)

    def current(self) -> TraceEntry | None:
        return self.entries[-1] if self.entries else None


_Action = tuple[int, int, int, str | None]
"""An action to fold: (kind code, packed time, fingerprint, area or None)."""


def _event_actions(event: Event, at: int) -> tuple[list[_Action], int]:
    """The actions an event stands for, its own first (with its area), and its kind code."""
    main_kind, extra = kinds_of(event)
    fp = event.event_id.int
    area = event.__dict__.get("area")
    main = KIND_CODE[main_kind]
    return [(main, at, fp, area)] + [(KIND_CODE[k], at, fp, None) for k in extra], main


def _merged_actions(event: IdentityMerged) -> list[_Action]:
    """The absorbed supporter's actions that a merge brings to the one kept."""
    return [
        (KIND_CODE[a.kind], _packed_time(a.event_time), a.event_id.int, a.area)
        for a in event.actions
        if a.kind in KIND_CODE
    ]


def _trace_skipped(trace: Trace, event: Event, outcome: str) -> None:
    trace.entries.append(TraceEntry(str(event.event_id), event.topic, event.event_time, outcome))


class Engine:
    """A compiled playbook: fold, rules and timers. One per stream worker."""

    def __init__(self, playbook: Playbook) -> None:
        self.playbook = playbook
        self.scorer = Scorer(playbook)
        self.half_life_days = playbook.model.scoring.half_life_days
        self.rules = list(playbook.model.rules)
        self.rule_checks: list[list[Check]] = [self.scorer.compile(r.when) for r in self.rules]
        self.rule_holds = [all_of(checks) for checks in self.rule_checks]
        self.on_event: dict[int, list[int]] = {}
        self.on_reached: dict[int, list[int]] = {}
        self.on_lost: dict[int, list[int]] = {}
        self.on_lapse: list[int] = []
        names = self.rung_names = playbook.rung_names
        self.rung_reasons = [r.description or f"reached {r.name}" for r in playbook.model.ladder]
        for index, rule in enumerate(self.rules):
            trigger = rule.trigger
            if trigger.event is not None:
                self.on_event.setdefault(KIND_CODE[trigger.event], []).append(index)
            elif trigger.rung_reached is not None:
                self.on_reached.setdefault(names.index(trigger.rung_reached), []).append(index)
            elif trigger.rung_lost is not None:
                self.on_lost.setdefault(names.index(trigger.rung_lost), []).append(index)
            else:
                self.on_lapse.append(index)
        self.on_lapse.sort(key=lambda i: self.rules[i].trigger.no_activity_days or 0)
        self.lapse_after = [
            (self.rules[i].trigger.no_activity_days or 0) * DAY_S for i in self.on_lapse
        ]

    # -- the fold ----------------------------------------------------------------------

    def apply(
        self,
        state: SupporterState,
        event: Event,
        arrived: float | None = None,
        emit: bool = True,
        trace: Trace | None = None,
        decisions: list[RuleDecision] | None = None,
    ) -> list[Event]:
        """Fold ``event`` into ``state`` (in place) and return what it causes.

        ``arrived`` is when the event reached the log (Unix seconds): events dated more than
        the playbook's tolerance after it raise FutureEvent (a RefusedEvent, as are events
        dated before 2000 or after the state's last time), and rules do not fire for events
        that arrive later than their ``stale_after_hours``. A repeated event changes nothing
        and causes nothing. With ``emit=False`` the state is rebuilt (replay): rules are
        decided and recorded as fired, and nothing is returned. ``decisions``, if given,
        collects the rules that fired (or held out), with their outputs' idempotency keys.
        """
        if state.rung < 0:
            if trace is not None:
                _trace_skipped(trace, event, "merged away" if state.rung == MERGED else "erased")
            return []
        if isinstance(event, SupporterErased):
            _forget(state, ERASED)
            return []
        at = _packed_time(event.event_time)
        if arrived is not None and at + EPOCH > arrived + self.scorer.future_tolerance_s:
            raise self._too_far_ahead(at, arrived)
        if isinstance(event, IdentityMerged):
            if event.role == "absorbed":
                state.actions, state.fired, state.rung = b"", b"", MERGED
                return []
            kinds, main = _merged_actions(event), None
        else:
            kinds, main = _event_actions(event, at)
        before = state.latest
        outcome, values = self._fold_actions(state, kinds, main is not None)
        if main is not None and outcome == "duplicate":
            if trace is not None:
                _trace_skipped(trace, event, "duplicate")
            return []
        view, previous = self._place(state, values)
        entry = None if trace is None else self._trace_entry(trace, event, main, outcome, view)
        sid = event.key()
        outputs = self._emitted(event, sid, state, view, previous, before) if emit else []
        # Rules answer actions that count: not a repeat, nor one over its cap or forgotten.
        candidates = (
            self.on_event.get(main, []) if main is not None and outcome == "counted" else []
        )
        if state.rung != previous:
            candidates = candidates + self._rung_rules(previous, state.rung)
        late = arrived - (at + EPOCH) if arrived is not None else 0.0
        explain = trace is not None or decisions is not None
        for index in candidates:
            decision, output = self._decide(
                index, state, view, sid, at, event, late=late, emit=emit, explain=explain
            )
            if entry is not None:
                entry.rules.append(decision)
            if decisions is not None and decision.output_id is not None:
                decisions.append(decision)
            if output is not None:
                outputs.append(output)
        return outputs

    def _too_far_ahead(self, at: int, arrived: float) -> FutureEvent:
        hours = (at + EPOCH - arrived) / 3600
        return FutureEvent(
            f"event_time is {hours:.1f} h after the event arrived (tolerance "
            f"{self.scorer.future_tolerance_s / 3600:g} h)"
        )

    def _fold_actions(
        self, state: SupporterState, kinds: list[_Action], is_event: bool
    ) -> tuple[str, list[int]]:
        """Add ``kinds`` to the supporter's kept actions: the newest time and the area move
        with them, and what has aged out is forgotten. Returns the outcome for the first (the
        event's own action: counted, duplicate...) and the actions kept. A repeated event
        (``is_event`` and its own action a duplicate) leaves the kept actions as they were."""
        scorer = self.scorer
        outcome = "counted"
        before = state.latest
        values = list(unpack_all(state.actions))
        changed = False
        for n, (code, t, fp, area) in enumerate(kinds):
            result = scorer.add(values, pack(t, code, fp), state.latest)
            changed = changed or result == "counted"
            if n == 0:
                outcome = result
            if result != "duplicate" and t >= state.latest:
                state.latest = t
                if area:
                    state.area = sys.intern(area)  # one copy per area, not per supporter
        if is_event and outcome == "duplicate":
            return outcome, values
        if state.latest > before:
            state.lapsed = 0  # a new quiet spell starts
            kept = scorer.forget(values, state.latest)
            if len(kept) != len(values):
                values, changed = kept, True
        if changed:
            state.actions = pack_all(values)
        return outcome, values

    def _place(self, state: SupporterState, values: list[int]) -> tuple[View, int]:
        """Score the kept actions as of the newest and put the supporter on the ladder: the
        view (with the new rung) and the rung before."""
        scorer = self.scorer
        view = scorer.view(values, state.latest, 0, state.area)
        if state.fell > state.latest:
            # Time has lowered the rung since the newest action: a late event is placed on the
            # ladder as of then, not as of the newest action, so it cannot undo the fall.
            then = scorer.view(values, state.fell, 0, state.area)
            previous, state.rung = state.rung, scorer.rung(then)
        else:
            previous, state.rung = state.rung, scorer.rung(view)
        view.rung = state.rung
        return view, previous

    def _trace_entry(
        self, trace: Trace, event: Event, main: int | None, outcome: str, view: View
    ) -> TraceEntry:
        """What the event did, for ``engage explain``: added to ``trace``, its rules to come."""
        kind_name = "identity.merged" if main is None else kinds_of(event)[0]
        entry = TraceEntry(
            str(event.event_id),
            kind_name,
            event.event_time,
            outcome,
            view.score,
            self.playbook.rung_names[view.rung],
        )
        trace.entries.append(entry)
        return entry

    def _emitted(
        self,
        event: Event,
        sid: str,
        state: SupporterState,
        view: View,
        previous: int,
        before: int,
    ) -> list[Event]:
        """The live stream's outputs for a folded event: the score, and the rung change if
        the rung moved (everyone starts on the first rung: a newcomer who starts higher
        moved up too). Rules' outputs follow them."""
        names = self.rung_names
        outputs: list[Event] = [
            built(
                EngagementScored,
                event_id=derived_event_id(event.event_id, "scored"),
                # The score's moment at the engine's resolution (whole seconds), the one
                # the read model compares: never the cause's own sub-second time.
                event_time=to_datetime(state.latest),
                supporter_id=sid,
                score=round(view.score, 6),
                rung=names[state.rung],
                previous_rung=names[previous] if before else None,
                cause_event_id=event.event_id,
                half_life_days=self.half_life_days,
            )
        ]
        if state.rung != previous:
            outputs.append(self._ladder_changed(sid, previous, view, event.event_id))
        return outputs

    def _rung_rules(self, previous: int, current: int) -> list[int]:
        if current > previous:
            return [i for r in range(previous + 1, current + 1) for i in self.on_reached.get(r, [])]
        return [i for r in range(current + 1, previous + 1) for i in self.on_lost.get(r, [])]

    def _ladder_changed(
        self,
        sid: str,
        previous: int,
        view: View,
        cause: uuid.UUID | None,
        episode: int | None = None,
        actions: bytes = b"",
    ) -> LadderChanged:
        """A rung change: caused by an event (its id derived from the event's), or by time
        passing (its id from the supporter, the move, the quiet spell and the actions kept,
        so every worker and every restart that sees the same fall gives it the same id, and
        a different fall a different one)."""
        names = self.playbook.rung_names
        reason = self.rung_reasons[view.rung]
        event_id = (
            derived_event_id(cause, f"ladder:{names[view.rung]}")
            if cause is not None
            else uuid.uuid5(
                _LAPSE_NAMESPACE,
                f"ladder:{sid}:{names[previous]}>{names[view.rung]}:quiet-since-{episode}:"
                f"{zlib.crc32(actions)}",
            )
        )
        return built(
            LadderChanged,
            event_id=event_id,
            event_time=to_datetime(view.as_of),
            supporter_id=sid,
            rung=names[view.rung],
            previous_rung=names[previous],
            direction="up" if view.rung > previous else "down",
            reason=reason,
            score=round(view.score, 6),
            cause_event_id=cause,
        )

    # -- rules -------------------------------------------------------------------------

    def _decide(
        self,
        index: int,
        state: SupporterState,
        view: View,
        sid: str,
        t: int,
        cause: Event | None,
        late: float = 0.0,
        emit: bool = True,
        episode: int | None = None,
        explain: bool = True,
    ) -> tuple[RuleDecision, Event | None]:
        """Whether rule ``index`` fires for this supporter at ``t``; record it if so. A
        suppression's reason is put in words only if ``explain`` (the live fold drops it)."""
        rule = self.rules[index]
        if not self.rule_holds[index](view):
            return _suppressed(rule, self._failing(index, view) if explain else "")
        action = rule.action
        if isinstance(action, SendAction) and action.send not in view.consent:
            return _suppressed(rule, f"no consent to {action.send}" if explain else "")
        if late > rule.stale_after_hours * 3600:
            why = f"stale: the event arrived {late / 3600:.0f} h after it" if explain else ""
            return _suppressed(rule, why)
        last = state.last_fired(index)
        if last is not None:
            if rule.cooldown_days == "once":
                return _suppressed(
                    rule, f"cooldown: fired once already, {to_datetime(last):%Y-%m-%d}"
                )
            if episode is not None and last >= episode:
                return _suppressed(rule, "cooldown: fired already for this quiet spell")
            if t < last or t - last < rule.cooldown_days * DAY_S:
                return _suppressed(
                    rule,
                    f"cooldown: fired {to_datetime(last):%Y-%m-%d}, "
                    f"{rule.cooldown_days} days between firings",
                )
        state.record_fired(index, t)
        held_out = _held_out(rule, sid)
        output_id = _output_id(rule, sid, t, episode)
        decision = RuleDecision(
            rule.name,
            "held out" if held_out else "fired",
            f"hold-out group ({rule.holdout_percent:g}%): recorded, not sent"
            if held_out
            else "all conditions hold",
            output_id,
        )
        if not emit:
            return decision, None
        if cause is not None:
            cause_id = cause.event_id
            event_id = derived_event_id(cause_id, rule.name)
        else:
            cause_id = uuid.uuid5(_LAPSE_NAMESPACE, f"lapse:{sid}:{episode}")
            event_id = uuid.uuid5(_LAPSE_NAMESPACE, output_id)
        when = to_datetime(t)
        if isinstance(action, SendAction):
            return decision, built(
                NudgeRequested,
                event_id=event_id,
                event_time=when,
                nudge_id=output_id,
                supporter_id=sid,
                channel=action.send,
                template=action.template,
                rule=rule.name,
                cause_event_id=cause_id,
                context=_context(state, cause),
                holdout=held_out,
            )
        return decision, built(
            TaskCreated,
            event_id=event_id,
            event_time=when,
            task_id=output_id,
            supporter_id=sid,
            kind=action.task,
            reason=action.reason,
            due_at=when + timedelta(hours=action.due_within_hours),
            area=state.area,
            rule=rule.name,
            cause_event_id=cause_id,
            priority=action.priority,
            holdout=held_out,
        )

    def _failing(self, index: int, view: View) -> str:
        failing = [c for c in self.rule_checks[index] if not c.holds(view)]
        return "conditions: " + "; ".join(c.describe(view) for c in failing)

    # -- timers ------------------------------------------------------------------------

    def tick(
        self,
        states: Mapping[str, SupporterState],
        now: float,
        emit: bool = True,
        touched: set[str] | None = None,
    ) -> list[Event]:
        """What time alone causes, as of ``now`` (Unix seconds): lapse rules for supporters
        quiet long enough (once per quiet spell), and rungs that fall as windows pass.
        ``touched``, if given, collects the supporters whose state time may have changed.

        Lapse rules see the rung a supporter had at their last activity: "a regular who went
        quiet" is still a regular to them.
        """
        outputs: list[Event] = []
        t = int(now) - EPOCH
        after = self.lapse_after
        windowed = self.scorer.first_windowed_rung
        for sid, state in states.items():
            if state.rung < 0 or not state.latest or t <= state.latest:
                continue
            due = bisect.bisect_right(after, t - state.latest)
            if state.lapsed >= due and state.rung < windowed:
                continue  # nothing new is due, and this rung cannot fall
            if touched is not None:
                touched.add(sid)
            outputs.extend(self._tick_one(sid, state, t, due, emit))
        return outputs

    def _tick_one(
        self, sid: str, state: SupporterState, t: int, due: int, emit: bool
    ) -> list[Event]:
        scorer = self.scorer
        outputs: list[Event] = []
        values = unpack_all(state.actions)
        if state.lapsed < due:
            # Each lapse rule is decided once per quiet spell, when the spell reaches its
            # length, on the supporter as they were at their last activity.
            then = scorer.view(values, state.latest, 0, state.area)
            then.rung = scorer.rung(then)
            for index in self.on_lapse[state.lapsed : due]:
                _, output = self._decide(
                    index,
                    state,
                    then,
                    sid,
                    t,
                    None,
                    emit=emit,
                    episode=state.latest,
                    explain=False,
                )
                if output is not None:
                    outputs.append(output)
            state.lapsed = due
        if state.rung >= scorer.first_windowed_rung:
            view = scorer.view(values, t, state.rung, state.area)
            current = scorer.rung(view)
            if current < state.rung:
                previous, state.rung = state.rung, current
                state.fell = t
                view.rung = current
                if emit:
                    outputs.append(
                        self._ladder_changed(sid, previous, view, None, state.latest, state.actions)
                    )
                for index in self._rung_rules(previous, current):
                    _, output = self._decide(index, state, view, sid, t, None, emit=emit,
                                             episode=state.latest, explain=False)  # fmt: skip
                    if output is not None:
                        outputs.append(output)
        return outputs

    # -- explaining --------------------------------------------------------------------

    def explain(
        self, sid: str, events: Iterable[tuple[Event, float | None]], now: float
    ) -> dict[str, Any]:
        """Fold a supporter's events (with their arrival times) and say why: each kept action
        and its decayed weight, the rung and why, every rule decision, what time will do."""
        state = SupporterState()
        trace = Trace()
        refused: list[dict[str, str]] = []
        for event, arrived in events:
            try:
                self.apply(state, event, arrived, emit=False, trace=trace)
            except RefusedEvent as exc:
                refused.append({"event_id": str(event.event_id), "reason": str(exc)})
        # What the stream's timer has done by now (lapse rules, rungs fallen as time passed).
        self.tick({sid: state}, now, emit=False)
        view = self.scorer.view(
            unpack_all(state.actions), state.latest, max(state.rung, 0), state.area, True
        )
        score = view.score
        names = self.playbook.rung_names
        return {
            "supporter_id": sid,
            "merged": state.rung == MERGED,
            "score": score,
            "as_of": to_datetime(state.latest).isoformat() if state.latest else None,
            "half_life_days": self.half_life_days,
            "rung": names[state.rung] if state.rung >= 0 else None,
            "rung_why": self.scorer.explain_rung(view, state.rung) if state.rung >= 0 else [],
            "consent": sorted(view.consent),
            "contributions": [
                {
                    "kind": c.kind,
                    "at": c.at.isoformat(),
                    "weight": c.weight,
                    "decay": c.factor,
                    "points": c.points,
                }
                for c in self.scorer.contributions(view)
                if c.weight
            ],
            "events": [
                {
                    "event_id": e.event_id,
                    "kind": e.kind,
                    "at": e.at.isoformat(),
                    "outcome": e.outcome,
                    "score": None if e.score is None else round(e.score, 6),
                    "rung": e.rung,
                    "rules": [asdict(d) for d in e.rules],
                }
                for e in trace.entries
            ],
            "timers": self._timers(state, now),
            "refused": refused,
        }

    def _timers(self, state: SupporterState, now: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for index in self.on_lapse:
            rule = self.rules[index]
            days = rule.trigger.no_activity_days or 0
            due = state.latest + days * DAY_S
            last = state.last_fired(index)
            out.append(
                {
                    "rule": rule.name,
                    "after_days_quiet": days,
                    "due": to_datetime(due).isoformat() if state.latest else None,
                    "fired_for_this_quiet_spell": last is not None and last >= state.latest > 0,
                    "overdue": state.latest > 0 and now - EPOCH >= due,
                }
            )
        return out


def _forget(state: SupporterState, marker: int) -> None:
    """Drop everything the state keeps; ``marker`` (a rung below zero) says why."""
    state.actions, state.fired, state.latest, state.area = b"", b"", 0, None
    state.lapsed = state.fell = 0
    state.rung = marker


def _suppressed(rule: Rule, reason: str) -> tuple[RuleDecision, None]:
    return RuleDecision(rule.name, "suppressed", reason), None


def _held_out(rule: Rule, sid: str) -> bool:
    """A deterministic share of supporters per rule: the same on every replay and worker."""
    if rule.holdout_percent <= 0:
        return False
    digest = hashlib.blake2b(f"{rule.name}:{sid}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % 10_000 < rule.holdout_percent * 100


def _output_id(rule: Rule, sid: str, t: int, episode: int | None) -> str:
    """The idempotency key of a rule's output, the same on every replay: once per supporter;
    once per quiet spell (lapse); or once per cooldown-sized window of time."""
    if episode is not None:
        return f"{rule.name}:{sid}:quiet-since-{episode}"
    if rule.cooldown_days == "once":
        return f"{rule.name}:{sid}"
    return f"{rule.name}:{sid}:{t // (rule.cooldown_days * DAY_S)}"


def _context(state: SupporterState, cause: Event | None) -> dict[str, str]:
    context = {"area": state.area} if state.area else {}
    for name in ("meeting_title", "petition_title"):
        value = cause.__dict__.get(name) if cause is not None else None
        if value:
            context[name] = value
    return context
