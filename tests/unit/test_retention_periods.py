"""Retention periods in one place: the settings give each topic's ``retention.ms`` through the
catalogue, and their defaults are the catalogue's own."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from engage.cli import build_parser
from infra.settings import Settings
from schemas.catalogue import DAY_MS, FOREVER, INPUT_TOPICS, TOPICS, topic_spec


@pytest.fixture(autouse=True)
def _no_engage_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("ENGAGE_"):
            monkeypatch.delenv(name)


def test_the_default_settings_give_the_catalogue_as_it_is() -> None:
    assert [spec.configs() for spec in Settings().topics()] == [s.configs() for s in TOPICS]
    assert topic_spec("supporter.signup").retention_ms == 730 * DAY_MS
    assert topic_spec("nudge.requested").retention_ms == 30 * DAY_MS
    assert topic_spec("supporter.erased").retention_ms == FOREVER


@pytest.mark.parametrize(
    ("variable", "topic", "days"),
    [
        ("ENGAGE_RETENTION_EVENTS_DAYS", "petition.signed", 365),
        ("ENGAGE_RETENTION_SCORES_DAYS", "ladder.changed", 100),
        ("ENGAGE_RETENTION_NUDGES_DAYS", "message.status", 400),
        ("ENGAGE_RETENTION_REQUESTS_DAYS", "task.created", 7),
        ("ENGAGE_RETENTION_DEADLETTER_DAYS", "deadletter", 14),
    ],
)
def test_each_period_comes_from_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, topic: str, days: int
) -> None:
    monkeypatch.setenv(variable, str(days))
    by_name = {spec.name: spec for spec in Settings().topics()}

    assert by_name[topic].configs()["retention.ms"] == str(days * DAY_MS)
    changed = [
        name for name, spec in by_name.items() if spec.retention_ms != topic_spec(name).retention_ms
    ]
    assert topic in changed and all(
        topic_spec(name).retention == topic_spec(topic).retention for name in changed
    )


def test_zero_days_is_forever_and_erasures_are_kept_forever_whatever_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENGAGE_RETENTION_EVENTS_DAYS", "0")
    by_name = {spec.name: spec for spec in Settings().topics()}

    assert {by_name[name].retention_ms for name in INPUT_TOPICS} == {FOREVER}
    assert by_name["deadletter"].retention_ms == 90 * DAY_MS
    assert by_name["supporter.erased"].retention == "forever"
    assert "retention_forever_days" not in Settings.model_fields


@pytest.mark.parametrize(
    "given",
    [{"retention_events_days": -1}, {"retention_check_hours": 0}, {"retention_check_hours": 169}],
)
def test_periods_and_the_check_interval_are_refused_out_of_range(given: dict[str, int]) -> None:
    with pytest.raises(ValidationError):
        Settings(**given)  # type: ignore[arg-type]


def test_the_command_parses() -> None:
    args = build_parser().parse_args(["retention", "apply", "--dry-run", "--json"])
    assert (args.action, args.dry_run, args.json) == ("apply", True, True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["retention"])
