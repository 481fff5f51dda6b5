"""When a nudge may go: quiet hours, staleness and frequency caps, decided in the recipient's zone.

Pure: the standard library only. The dispatcher passes the clock, the supporter's zone and the
times of the messages already sent to them on the channel, and stores the decision.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_WINDOW = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])$")


@dataclass(frozen=True)
class QuietHours:
    """Local wall-clock times between which nothing is sent: ``start`` inclusive, ``end``
    exclusive; a window whose start is after its end runs over midnight (21:00-09:00)."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> QuietHours | None:
        """``"21:00-09:00"``; an empty text means no quiet hours. Raises ValueError."""
        text = text.strip()
        if not text:
            return None
        match = _WINDOW.match(text)
        if match is None:
            raise ValueError(f"quiet hours {text!r}: expected HH:MM-HH:MM, for example 21:00-09:00")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if (h1, m1) == (h2, m2):
            raise ValueError(f"quiet hours {text!r}: start and end are the same")
        return cls(time(h1, m1), time(h2, m2))

    def covers(self, local: time) -> bool:
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def opens_after(self, now: datetime, zone: ZoneInfo) -> datetime | None:
        """When the window next opens (aware, in ``zone``), or None when ``now`` is outside it.

        Daylight saving: the end is a wall-clock time on the local date, so 09:00 stays 09:00
        in both GMT and BST; a time that a spring-forward skips maps to the instant after it.
        """
        local = now.astimezone(zone)
        if not self.covers(local.time()):
            return None
        day = local.date()
        if local.time() >= self.end:  # the window started this evening: it ends tomorrow
            day += timedelta(days=1)
        return _wall_clock(datetime.combine(day, self.end), zone)

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def _wall_clock(naive: datetime, zone: ZoneInfo) -> datetime:
    """The instant a local wall-clock time names; a skipped time becomes the first one after."""
    # fold=0: an ambiguous (autumn) time is its first occurrence; a skipped (spring) time
    # takes the offset before the change, which the round trip turns into the time after it.
    return naive.replace(tzinfo=zone).astimezone(_UTC).astimezone(zone)


_UTC = ZoneInfo("UTC")


@dataclass(frozen=True)
class ChannelPolicy:
    """How one channel may be used. ``per_day``/``per_week``: most messages sent in a local
    calendar day / ISO week (Monday to Sunday) across all rules; 0 means no cap. A message
    planned more than ``stale_after`` ago is dropped rather than sent late."""

    quiet: QuietHours | None
    stale_after: timedelta
    per_day: int = 0
    per_week: int = 0


Action = Literal["send", "hold", "skip"]


@dataclass(frozen=True)
class SendDecision:
    action: Action
    reason_code: str | None = None
    reason: str | None = None
    not_before: datetime | None = None


SEND = SendDecision("send")


def zone_of(name: str | None, default: ZoneInfo) -> ZoneInfo:
    """The named zone, or ``default`` when the name is empty or unknown."""
    if not name:
        return default
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return default


def decide(
    policy: ChannelPolicy,
    channel: str,
    requested_at: datetime,
    now: datetime,
    zone: ZoneInfo,
    sent: Iterable[datetime],
) -> SendDecision:
    """Send now, hold until the quiet hours end, or skip (stale, or over a cap).

    Staleness comes first: a message planned ``stale_after`` ago is dropped, and so is one
    that quiet hours would hold past that age. Caps count ``sent`` (times of messages on this
    channel that went, or may have gone, to the same person) in the local day and week of
    ``now``.
    """
    age = now - requested_at
    if age > policy.stale_after:
        return SendDecision(
            "skip",
            "stale",
            f"planned {_hours(age)} ago, past the {_hours(policy.stale_after)} limit",
        )
    if policy.quiet is not None:
        opens = policy.quiet.opens_after(now, zone)
        if opens is not None:
            if opens - requested_at > policy.stale_after:
                return SendDecision(
                    "skip",
                    "stale",
                    f"quiet hours {policy.quiet} ({zone.key}) until {opens:%H:%M}; it would be "
                    f"{_hours(opens - requested_at)} old then, past the "
                    f"{_hours(policy.stale_after)} limit",
                )
            return SendDecision(
                "hold",
                "quiet_hours",
                f"quiet hours {policy.quiet} ({zone.key}): held until {opens:%Y-%m-%d %H:%M %Z}",
                opens,
            )
    if policy.per_day or policy.per_week:
        local = now.astimezone(zone)
        day_start = _wall_clock(datetime.combine(local.date(), time()), zone)
        week_start = cap_window_start(now, zone)
        times = [t for t in sent if t >= week_start]
        today = sum(1 for t in times if t >= day_start)
        if policy.per_day and today >= policy.per_day:
            return SendDecision(
                "skip",
                "cap_day",
                f"{today} {channel} message(s) already sent today ({zone.key}); "
                f"the cap is {policy.per_day} a day",
            )
        if policy.per_week and len(times) >= policy.per_week:
            return SendDecision(
                "skip",
                "cap_week",
                f"{len(times)} {channel} message(s) already sent this week ({zone.key}); "
                f"the cap is {policy.per_week} a week",
            )
    return SEND


def cap_window_start(now: datetime, zone: ZoneInfo) -> datetime:
    """The earliest send time that ``decide`` can count: the start of the local ISO week."""
    local = now.astimezone(zone)
    return _wall_clock(
        datetime.combine(local.date() - timedelta(days=local.weekday()), time()), zone
    )


def _hours(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.0f} h" if hours >= 10 else f"{hours:.1f} h"
