"""Traffic simulator: realistic, seed-deterministic supporter journeys posted to the ingest API.

``population`` holds the areas, petitions and meetings; ``journeys`` draws every supporter's
events from one seeded ``Random`` (Faker, an optional extra, is imported there, when names are
first needed); ``driver`` posts them through the ingest client at a rate.
"""

from producers.simulator.driver import SimulationReport, TypeCounts, simulate
from producers.simulator.journeys import CONSENT_WORDING, generate_events
from producers.simulator.population import (
    AREAS,
    DEFAULT_START,
    NATIONAL_PETITIONS,
    Area,
    Meeting,
    Petition,
    plan_meetings,
)

__all__ = [
    "AREAS",
    "CONSENT_WORDING",
    "DEFAULT_START",
    "NATIONAL_PETITIONS",
    "Area",
    "Meeting",
    "Petition",
    "SimulationReport",
    "TypeCounts",
    "generate_events",
    "plan_meetings",
    "simulate",
]
