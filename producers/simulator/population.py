"""The simulated movement: its areas, postcodes, neighbourhoods, petitions and meetings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

DEFAULT_START = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday; fixed so a seed repeats exactly


@dataclass(frozen=True)
class Petition:
    petition_id: str
    title: str


@dataclass(frozen=True)
class Area:
    name: str
    slug: str
    weight: float
    outward_codes: tuple[str, ...]
    neighbourhoods: tuple[str, ...]
    meeting_weekday: int  # Monday is 0
    petitions: tuple[Petition, ...]


@dataclass(frozen=True)
class Meeting:
    meeting_id: str
    title: str
    starts_at: datetime
    area: str


def _petitions(slug: str, *titles: str) -> tuple[Petition, ...]:
    return tuple(Petition(f"pet-{slug}-{n}", title) for n, title in enumerate(titles, 1))


NATIONAL_PETITIONS = _petitions(
    "national",
    "Rent controls now: cap rent rises at inflation",
    "Free school meals for every child",
)
AREAS: tuple[Area, ...] = (
    Area(
        "Manchester", "manchester", 1.4,
        ("M1", "M4", "M13", "M14", "M15", "M16", "M19", "M20"),
        ("Levenshulme", "Hulme", "Moss Side", "Rusholme", "Ancoats"), 1,
        _petitions(
            "manchester",
            "Save Levenshulme Library",
            "Fix the damp in Hulme council homes",
            "Safe crossings on Wilmslow Road",
        ),
    ),
    Area(
        "Leeds", "leeds", 1.0,
        ("LS2", "LS4", "LS6", "LS7", "LS8", "LS9", "LS11"),
        ("Headingley", "Harehills", "Chapeltown", "Kirkstall", "Beeston"), 2,
        _petitions(
            "leeds",
            "Keep Kirkstall Leisure Centre open",
            "A safe crossing on Harehills Lane",
            "No to the Headingley rent hike",
        ),
    ),
    Area(
        "Bristol", "bristol", 1.0,
        ("BS1", "BS2", "BS3", "BS5", "BS6", "BS7"),
        ("Easton", "Bedminster", "St Pauls", "Bishopston", "Southville"), 3,
        _petitions(
            "bristol",
            "Save the Easton community centre",
            "Clean air zone for Bedminster schools",
            "Fair rents in St Pauls",
        ),
    ),
    Area(
        "Glasgow", "glasgow", 1.0,
        ("G3", "G11", "G12", "G20", "G31", "G41", "G42", "G51"),
        ("Govanhill", "Govan", "Maryhill", "Dennistoun", "Partick"), 1,
        _petitions(
            "glasgow",
            "Stop the Govanhill evictions",
            "Warm homes for Govan",
            "Keep the Maryhill swimming baths open",
        ),
    ),
    Area(
        "Cardiff", "cardiff", 0.8,
        ("CF5", "CF10", "CF11", "CF14", "CF24"),
        ("Splott", "Grangetown", "Canton", "Cathays", "Adamsdown"), 2,
        _petitions(
            "cardiff",
            "Protect the Splott community garden",
            "Safer cycle lanes on Cowbridge Road",
            "Reopen Grangetown's youth club",
        ),
    ),
    Area(
        "Hackney", "hackney", 1.3,
        ("E5", "E8", "E9", "N1", "N16"),
        ("Dalston", "Clapton", "Homerton", "Stoke Newington", "Hackney Wick"), 3,
        _petitions(
            "hackney",
            "Save Ridley Road Market",
            "Clean air outside Hackney schools",
            "Stop the Stoke Newington rent hikes",
        ),
    ),
    Area(
        "Birmingham", "birmingham", 1.2,
        ("B5", "B10", "B11", "B12", "B13", "B29"),
        ("Balsall Heath", "Sparkbrook", "Moseley", "Small Heath", "Selly Oak"), 0,
        _petitions(
            "birmingham",
            "Reopen Moseley Road Baths",
            "Fix the potholes in Sparkbrook",
            "Keep Balsall Heath library open",
        ),
    ),
    Area(
        "Newcastle", "newcastle", 0.8,
        ("NE1", "NE2", "NE4", "NE6", "NE15"),
        ("Byker", "Walker", "Heaton", "Elswick", "Benwell"), 2,
        _petitions(
            "newcastle",
            "Save Byker's youth club",
            "Warm spaces in Walker this winter",
            "Keep Metro fares down",
        ),
    ),
)  # fmt: skip
INWARD_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"  # letters used in the inward code
EMAIL_DOMAINS = ("example.org", "example.com", "example.net", "mail.example.org")
SIGNUP_SOURCES = ("website", "website", "street-stall", "social", "referral")
MOBILE_SECOND_DIGITS = "45789"  # 074xx, 075xx, 077xx, 078xx, 079xx


def plan_meetings(start: datetime = DEFAULT_START, days: int = 28) -> list[Meeting]:
    """Every area's meetings in the window, by start time.

    A branch meeting each week on the area's weekday at 18:30 UTC, and an action (door-knocking
    or a street stall) every other Saturday at 11:00 UTC. Meetings starting in the last hour of
    the window are left out so that their attendance still falls inside it.
    """
    end = start + timedelta(days=days)
    first_day = datetime(start.year, start.month, start.day, tzinfo=start.tzinfo)
    meetings: list[Meeting] = []
    for offset in range(days + 1):
        day = first_day + timedelta(days=offset)
        for area in AREAS:
            if day.weekday() == area.meeting_weekday:
                at = day.replace(hour=18, minute=30)
                title = f"{area.name} branch meeting"
                meetings.append(Meeting(_meeting_id(area, at, "branch"), title, at, area.name))
            if day.weekday() == 5 and (offset // 7) % 2 == 0:
                at = day.replace(hour=11)
                place = area.neighbourhoods[(offset // 14) % len(area.neighbourhoods)]
                kind, title = (
                    ("doors", f"Door-knocking in {place}")
                    if (offset // 14) % 2 == 0
                    else ("stall", f"Street stall in {place}")
                )
                meetings.append(Meeting(_meeting_id(area, at, kind), title, at, area.name))
    return sorted(
        (m for m in meetings if start < m.starts_at < end - timedelta(hours=1)),
        key=lambda m: (m.starts_at, m.meeting_id),
    )


def _meeting_id(area: Area, at: datetime, kind: str) -> str:
    return f"mtg-{area.slug}-{at:%Y%m%d}-{kind}"
