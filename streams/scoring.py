"""Engagement score and ladder rung: pure functions of a supporter's kept actions, in event time.

A supporter's actions are kept packed, eight bytes each, in one ``bytes`` value: seconds since
2000-01-01 UTC (32 bits), the action kind (8 bits) and a 24-bit fingerprint of the event id.
Sorted, they order by time, then kind, then fingerprint, which is the order caps use.

What is kept does not depend on the order events arrive in:

- a repeat (same time, kind and fingerprint) is dropped;
- of the actions of one kind in one cap window (``per_days`` days from 2000-01-01), only the
  ``cap`` earliest are kept, so a late, earlier action displaces a later one;
- actions more than ``forget_after_days`` older than the newest action seen are dropped; an
  action of a capped kind only once its whole cap window is, so that which actions a window
  keeps never depends on whether its earliest ones arrived before or after the newest action;
- of a channel's consent actions (opted in, opted out), only the newest is kept, and it is
  never forgotten.

The score is ``fsum`` of weight x 2^-(age / half-life) over the kept actions, at the time of the
newest action; ``fsum`` is exactly rounded, so the sum does not depend on the order either.
"""

from __future__ import annotations

import bisect
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from schemas.actions import CONSENT_KINDS, KINDS
from streams.playbook import Conditions, Count, Playbook

EPOCH = 946_684_800
"""2000-01-01 00:00 UTC in Unix seconds: packed times count from here (the API refuses
anything earlier)."""
DAY_S = 86_400
KIND_CODE: dict[str, int] = {kind: code for code, kind in enumerate(KINDS)}
_FP_MASK = 0xFFFFFF
_NONE: frozenset[str] = frozenset()


def pack(t: int, kind: int, fingerprint: int) -> int:
    return t << 32 | kind << 24 | (fingerprint & _FP_MASK)


def unpack_all(packed: bytes) -> tuple[int, ...]:
    return struct.unpack(f"<{len(packed) >> 3}Q", packed)


def pack_all(values: Sequence[int]) -> bytes:
    return struct.pack(f"<{len(values)}Q", *values)


def time_of(value: int) -> int:
    return value >> 32


def kind_of(value: int) -> int:
    return (value >> 24) & 0xFF


def to_datetime(t: int) -> datetime:
    return datetime.fromtimestamp(t + EPOCH, UTC)


def to_packed_time(moment: datetime) -> int:
    return int(moment.timestamp()) - EPOCH


@dataclass(frozen=True, slots=True)
class Contribution:
    """One kept action's part of the score: its weight, decayed to the score's moment."""

    kind: str
    at: datetime
    weight: float
    factor: float

    @property
    def points(self) -> float:
        return self.weight * self.factor


@dataclass(slots=True)
class View:
    """What conditions look at: kept action times by kind, the moment, the score, the rung."""

    times: dict[int, list[int]]
    as_of: int
    score: float
    rung: int = 0
    area: str | None = None
    consent: frozenset[str] = frozenset()
    terms: list[tuple[int, int, float, float]] = field(default_factory=list)
    counted: dict[int, int] = field(default_factory=dict)


class Check:
    """One compiled condition: whether it holds for a view, and why, in words."""

    def __init__(self, holds: Callable[[View], bool], describe: Callable[[View], str]) -> None:
        self.holds = holds
        self.describe = describe


class Scorer:
    """A playbook's scoring and ladder, compiled for the stream's per-event fold."""

    def __init__(self, playbook: Playbook) -> None:
        scoring = playbook.model.scoring
        self.half_life_s = scoring.half_life_days * DAY_S
        self.forget_s = scoring.forget_after_days * DAY_S
        self.future_tolerance_s = scoring.future_tolerance_hours * 3600
        self.weights = [0.0] * len(KINDS)
        self.caps: list[tuple[int, int] | None] = [None] * len(KINDS)
        for kind, spec in scoring.actions.items():
            self.weights[KIND_CODE[kind]] = spec.weight
            if spec.cap is not None:
                self.caps[KIND_CODE[kind]] = (spec.cap, spec.per_days * DAY_S)
        self.consent_channel: dict[int, str] = {
            KIND_CODE[kind]: channel for channel, kinds in CONSENT_KINDS.items() for kind in kinds
        }
        self.opted_in = {KIND_CODE[kinds[0]]: channel for channel, kinds in CONSENT_KINDS.items()}
        self.rung_names = playbook.rung_names
        self._memo_keys: dict[tuple[tuple[int, ...], int | None], int] = {}
        self.rung_checks: list[list[Check]] = []
        for rung in playbook.model.ladder:
            self.rung_checks.append(self.compile(rung.when, ladder=True))
        self.rung_holds = [all_of(checks) for checks in self.rung_checks]
        # The lowest rung whose conditions look back over a window: rungs below it cannot fall.
        self.first_windowed_rung = next(
            (i for i, r in enumerate(playbook.model.ladder) if _has_window(r.when)),
            len(self.rung_names),
        )

    # -- keeping actions (on the unpacked, sorted list of a supporter's values) ---------

    def add(self, values: list[int], value: int, latest: int) -> str:
        """Add one packed action to ``values`` (in place, kept sorted) and say what became of
        it: 'counted', 'duplicate', 'over cap', 'forgotten' or 'superseded'."""
        if value in values:
            return "duplicate"
        kind = (value >> 24) & 0xFF
        t = value >> 32
        channels = self.consent_channel
        channel = channels.get(kind)
        if channel is not None:
            same = [v for v in values if channels.get((v >> 24) & 0xFF) == channel]
            if any(v > value for v in same):
                return "superseded"
            for v in same:
                values.remove(v)
        elif self._forgotten(kind, t, latest - self.forget_s):
            return "forgotten"
        else:
            cap = self.caps[kind]
            if cap is not None:
                limit, window = cap
                slot = t // window
                same = [
                    v for v in values if (v >> 24) & 0xFF == kind and (v >> 32) // window == slot
                ]
                if len(same) >= limit:
                    last = max(same)
                    if value > last:
                        return "over cap"
                    values.remove(last)
        bisect.insort(values, value)
        return "counted"

    def forget(self, values: list[int], latest: int) -> list[int]:
        """Drop actions too old to count any more (consent actions stay)."""
        horizon = latest - self.forget_s
        if not values or time_of(values[0]) >= horizon:
            return values
        consent = self.consent_channel
        return [
            v
            for v in values
            if time_of(v) >= horizon
            or kind_of(v) in consent
            or not self._forgotten(kind_of(v), time_of(v), horizon)
        ]

    def _forgotten(self, kind: int, t: int, horizon: int) -> bool:
        """Older than ``horizon``; an action of a capped kind, once its whole cap window is."""
        cap = self.caps[kind]
        if cap is None:
            return t < horizon
        window = cap[1]
        return (t // window + 1) * window <= horizon

    # -- score and rung ----------------------------------------------------------------

    def view(
        self,
        values: Sequence[int],
        as_of: int,
        rung: int = 0,
        area: str | None = None,
        keep_terms: bool = False,
    ) -> View:
        """Everything conditions look at, from one pass over the kept actions, including the
        score: ``fsum`` of each action's weight x 2^-(age / half-life) at ``as_of`` (actions
        after ``as_of`` count in full). With ``keep_terms``, ``terms`` keeps each action's
        part for explanations: the score and its explanation come from the same arithmetic."""
        times: dict[int, list[int]] = {}
        consent: dict[str, bool] = {}
        terms: list[tuple[int, int, float, float]] = []
        points: list[float] = []
        channels = self.consent_channel
        opted_in = self.opted_in
        weights = self.weights
        half_life = self.half_life_s
        for value in values:
            kind = (value >> 24) & 0xFF
            t = value >> 32
            age = as_of - t
            factor = 2.0 ** (-age / half_life) if age > 0 else 1.0
            weight = weights[kind]
            points.append(weight * factor)
            if keep_terms:
                terms.append((kind, t, weight, factor))
            if kind in times:
                times[kind].append(t)
            else:
                times[kind] = [t]
            if kind in channels:
                consent[channels[kind]] = kind in opted_in
        granted = frozenset(c for c, yes in consent.items() if yes) if consent else _NONE
        return View(times, as_of, math.fsum(points), rung, area, granted, terms)

    def score(self, values: Sequence[int], as_of: int) -> float:
        return self.view(values, as_of).score

    def contributions(self, view: View) -> list[Contribution]:
        """Each kept action's part of ``view.score`` (a view made with ``keep_terms``)."""
        return [Contribution(KINDS[kind], to_datetime(t), w, f) for kind, t, w, f in view.terms]

    def rung(self, view: View) -> int:
        """The highest rung whose conditions hold (the first rung always does)."""
        for index in range(len(self.rung_holds) - 1, 0, -1):
            if self.rung_holds[index](view):
                return index
        return 0

    def explain_rung(self, view: View, rung: int) -> list[str]:
        """Why ``rung`` holds and, if there is one, what the next rung still needs."""
        lines = [f"{self.rung_names[rung]}: " + _why(self.rung_checks[rung], view)]
        if rung + 1 < len(self.rung_checks):
            lines.append(
                f"next, {self.rung_names[rung + 1]}: "
                + _why(self.rung_checks[rung + 1], view, only_failing=True)
            )
        return lines

    # -- conditions --------------------------------------------------------------------

    def compile(self, when: Conditions, ladder: bool = False) -> list[Check]:
        """Turn conditions into checks; all of them must hold.

        In the ladder, ``rung_at_least`` means that lower rung's conditions hold (the rung
        being computed is not known yet); in a rule, that the current rung is that high.
        """
        checks: list[Check] = []
        names = self.rung_names
        if when.rung_in is not None:
            wanted = frozenset(names.index(n) for n in when.rung_in)
            checks.append(
                Check(
                    lambda v: v.rung in wanted,
                    lambda v: (
                        f"rung is {names[v.rung]}, wanted one of {', '.join(when.rung_in or [])}"
                    ),
                )
            )
        if when.rung_at_least is not None:
            floor = names.index(when.rung_at_least)
            below = all_of(self.rung_checks[floor]) if ladder else None
            checks.append(
                Check(
                    below if below is not None else (lambda v: v.rung >= floor),
                    lambda v: f"at least {names[floor]}",
                )
            )
        if when.score_at_least is not None:
            low = when.score_at_least
            checks.append(
                Check(lambda v: v.score >= low, lambda v: f"score {v.score:.1f} >= {low:g}")
            )
        if when.score_below is not None:
            high = when.score_below
            checks.append(
                Check(lambda v: v.score < high, lambda v: f"score {v.score:.1f} < {high:g}")
            )
        if when.consent is not None:
            channel = when.consent
            checks.append(Check(lambda v: channel in v.consent, lambda v: f"consents to {channel}"))
        if when.area_in is not None:
            areas = frozenset(when.area_in)
            checks.append(
                Check(lambda v: v.area in areas, lambda v: f"area {v.area or 'unknown'} wanted")
            )
        for flag, kinds in (
            (when.has_rsvped, ("event.rsvp",)),
            (when.has_attended, ("event.attended", "event.hosted")),
        ):
            if flag is not None:
                checks.append(self._count(Count(of=list(kinds), at_least=1 if flag else 0,
                                                 at_most=None if flag else 0)))  # fmt: skip
        checks.extend(self._count(count) for count in when.count)
        if when.any:
            alternatives = [self.compile(sub, ladder) for sub in when.any]
            options = [all_of(alt) for alt in alternatives]
            checks.append(
                Check(
                    lambda v: any(holds(v) for holds in options),
                    lambda v: "any of: " + "; or ".join(_why(alt, v) for alt in alternatives),
                )
            )
        return checks

    def _count(self, count: Count) -> Check:
        codes = tuple(KIND_CODE[k] for k in count.kinds)
        window = count.within_days * DAY_S if count.within_days else None
        low, high = count.at_least, count.at_most
        label = " or ".join(count.kinds)

        memo = len(self._memo_keys)  # counts with the same kinds and window share an index
        memo = self._memo_keys.setdefault((codes, window), memo)

        def number(v: View) -> int:
            # Each kind's times are in ascending order (values are kept sorted). The ladder
            # and the rules ask the same counts again, so each view remembers them.
            counted = v.counted
            if memo in counted:
                return counted[memo]
            n = 0
            for code in codes:
                times = v.times.get(code)
                if times:
                    n += (
                        len(times)
                        if window is None
                        else len(times) - bisect.bisect_left(times, v.as_of - window)
                    )
            counted[memo] = n
            return n

        def holds(v: View) -> bool:
            n = number(v)
            return n >= low and (high is None or n <= high)

        def describe(v: View) -> str:
            span = f" in {count.within_days} days" if count.within_days else ""
            wanted = f"at least {low}" if high is None else f"{low} to {high}"
            return f"{label}: {number(v)}{span} (wanted {wanted})"

        return Check(holds, describe)


def all_of(checks: list[Check]) -> Callable[[View], bool]:
    """One function that is true when every check holds, cheaper than looping over them."""
    if not checks:
        return lambda v: True
    if len(checks) == 1:
        return checks[0].holds
    if len(checks) == 2:
        first, second = checks[0].holds, checks[1].holds
        return lambda v: first(v) and second(v)
    holds = [c.holds for c in checks]
    return lambda v: all(h(v) for h in holds)


def _why(checks: list[Check], view: View, only_failing: bool = False) -> str:
    parts = [
        f"{'yes' if check.holds(view) else 'no'}, {check.describe(view)}"
        for check in checks
        if not (only_failing and check.holds(view))
    ]
    return "; ".join(parts) if parts else "always"


def _has_window(when: Conditions) -> bool:
    return (
        any(c.within_days for c in when.count)
        or when.score_at_least is not None
        or any(_has_window(sub) for sub in when.any)
    )
