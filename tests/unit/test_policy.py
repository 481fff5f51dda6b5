"""Quiet hours, staleness and caps: decided in the recipient's zone, across daylight saving."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from consumers.policy import ChannelPolicy, QuietHours, cap_window_start, decide, zone_of

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")
NIGHT = QuietHours(time(21), time(9))
SMS = ChannelPolicy(quiet=NIGHT, stale_after=timedelta(hours=12), per_day=1, per_week=3)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("21:00-09:00", NIGHT),
        (" 12:30-13:45 ", QuietHours(time(12, 30), time(13, 45))),
        ("", None),
    ],
)
def test_quiet_hours_parse(text: str, expected: QuietHours | None) -> None:
    assert QuietHours.parse(text) == expected


@pytest.mark.parametrize("text", ["21-9", "25:00-09:00", "21:00-21:00", "9:00-10:00", "x"])
def test_quiet_hours_refuse_what_they_cannot_read(text: str) -> None:
    with pytest.raises(ValueError, match="quiet hours"):
        QuietHours.parse(text)


@pytest.mark.parametrize(
    ("now", "opens"),
    [
        # Winter (GMT = UTC).
        (utc(2026, 1, 14, 20, 59), None),
        (utc(2026, 1, 14, 21, 0), utc(2026, 1, 15, 9, 0)),
        (utc(2026, 1, 15, 3, 0), utc(2026, 1, 15, 9, 0)),
        (utc(2026, 1, 15, 9, 0), None),
        # Summer (BST = UTC+1): the window is 20:00-08:00 UTC.
        (utc(2026, 7, 1, 19, 59), None),
        (utc(2026, 7, 1, 20, 0), utc(2026, 7, 2, 8, 0)),
        (utc(2026, 7, 2, 7, 59), utc(2026, 7, 2, 8, 0)),
        (utc(2026, 7, 2, 8, 0), None),
        # Spring forward (29 March 2026, 01:00 GMT -> 02:00 BST): the evening before is GMT,
        # the morning after is BST, so the night is an hour shorter in UTC.
        (utc(2026, 3, 28, 21, 30), utc(2026, 3, 29, 8, 0)),
        (utc(2026, 3, 29, 7, 59), utc(2026, 3, 29, 8, 0)),
        (utc(2026, 3, 29, 8, 0), None),
        # Fall back (25 October 2026, 02:00 BST -> 01:00 GMT): an hour longer.
        (utc(2026, 10, 24, 20, 0), utc(2026, 10, 25, 9, 0)),
        (utc(2026, 10, 25, 8, 30), utc(2026, 10, 25, 9, 0)),
        (utc(2026, 10, 25, 9, 0), None),
    ],
)
def test_quiet_hours_follow_london_wall_clock_across_daylight_saving(
    now: datetime, opens: datetime | None
) -> None:
    got = NIGHT.opens_after(now, LONDON)
    assert got == opens
    if got is not None:
        assert got.astimezone(LONDON).time() == time(9)


def test_a_window_inside_one_day() -> None:
    lunch = QuietHours(time(12), time(14))
    assert lunch.opens_after(utc(2026, 1, 14, 11, 59), LONDON) is None
    assert lunch.opens_after(utc(2026, 1, 14, 13, 0), LONDON) == utc(2026, 1, 14, 14, 0)


def test_a_skipped_wall_clock_time_opens_at_the_first_instant_after() -> None:
    # 01:30 does not exist in London on 29 March 2026; a window ending then ends at 02:30 BST.
    early = QuietHours(time(0, 30), time(1, 30))
    opens = early.opens_after(utc(2026, 3, 29, 0, 45), LONDON)
    assert opens == utc(2026, 3, 29, 1, 30)
    assert opens is not None and opens.astimezone(LONDON).hour == 2


@pytest.mark.parametrize(
    ("requested", "now", "action", "code"),
    [
        (utc(2026, 1, 14, 12), utc(2026, 1, 14, 13), "send", None),
        (utc(2026, 1, 14, 21, 30), utc(2026, 1, 14, 22), "hold", "quiet_hours"),
        # Held until 09:00 it would be 11 h old: still inside 12 h, so held.
        (utc(2026, 1, 14, 22), utc(2026, 1, 14, 22, 5), "hold", "quiet_hours"),
        # Planned at 18:00, held until 09:00: 15 h, past the limit, so dropped now.
        (utc(2026, 1, 14, 18), utc(2026, 1, 14, 21, 30), "skip", "stale"),
        (utc(2026, 1, 13, 10), utc(2026, 1, 14, 10), "skip", "stale"),
    ],
)
def test_decide_sends_holds_or_drops(
    requested: datetime, now: datetime, action: str, code: str | None
) -> None:
    decision = decide(SMS, "sms", requested, now, LONDON, [])
    assert (decision.action, decision.reason_code) == (action, code)
    if action == "hold":
        assert decision.not_before == NIGHT.opens_after(now, LONDON)
        assert decision.reason is not None and "Europe/London" in decision.reason


def test_caps_count_the_local_day_and_week_across_rules() -> None:
    monday_noon = utc(2026, 1, 12, 12)
    email = ChannelPolicy(quiet=None, stale_after=timedelta(days=2), per_day=2, per_week=3)
    one_today = [utc(2026, 1, 12, 8)]
    assert decide(email, "email", monday_noon, monday_noon, LONDON, one_today).action == "send"
    two_today = [*one_today, utc(2026, 1, 12, 9)]
    capped = decide(email, "email", monday_noon, monday_noon, LONDON, two_today)
    assert (capped.action, capped.reason_code) == ("skip", "cap_day")
    assert capped.reason is not None and "2 a day" in capped.reason
    wednesday = utc(2026, 1, 14, 12)
    three_this_week = [*two_today, utc(2026, 1, 13, 9)]
    week = decide(email, "email", wednesday, wednesday, LONDON, three_this_week)
    assert (week.action, week.reason_code) == ("skip", "cap_week")
    # Last week's messages do not count.
    next_monday = utc(2026, 1, 19, 0, 30)
    assert decide(email, "email", next_monday, next_monday, LONDON, three_this_week) == decide(
        email, "email", next_monday, next_monday, LONDON, []
    )


def test_the_cap_day_is_the_supporters_own() -> None:
    email = ChannelPolicy(quiet=None, stale_after=timedelta(days=2), per_day=1)
    # 02:00 UTC on the 15th is still the 14th in New York (21:00 EST).
    sent = [utc(2026, 1, 14, 15)]
    now = utc(2026, 1, 15, 2)
    assert decide(email, "email", now, now, NEW_YORK, sent).reason_code == "cap_day"
    assert decide(email, "email", now, now, LONDON, sent).action == "send"


def test_the_cap_week_starts_on_monday_local_time_in_summer() -> None:
    # Sunday 23:30 UTC in July is Monday 00:30 BST: a new week in London.
    now = utc(2026, 7, 5, 23, 30)
    assert cap_window_start(now, LONDON) == utc(2026, 7, 5, 23, 0)
    weekly = ChannelPolicy(quiet=None, stale_after=timedelta(days=2), per_week=1)
    assert decide(weekly, "sms", now, now, LONDON, [utc(2026, 7, 5, 12)]).action == "send"


def test_zone_of_falls_back_to_the_default() -> None:
    assert zone_of("America/New_York", LONDON) == NEW_YORK
    assert zone_of(None, LONDON) is LONDON
    assert zone_of("Mars/Olympus", LONDON) is LONDON
    assert zone_of("../etc/passwd", LONDON) is LONDON
