"""Settings reach the supervisor's children explicitly, as the ENGAGE_* variables that give them
back, and the demo changes its own settings rather than the process environment."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engage.demo import _demo_quiet_hours
from engage.processes import Supervisor
from infra.settings import Settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ENGAGE_"):
            monkeypatch.delenv(name)


def test_every_setting_comes_back_from_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    given = Settings(
        home=Path("/tmp/somewhere"),
        api_token="token",
        identity_key="key",
        sms_quiet_hours="10:00-12:00",
        sms_cap_per_day=4,
        lapse_check_seconds=0.5,
        log_json=False,
        playbook=Path("/tmp/playbook.yaml"),
    )
    env = given.as_environment()
    assert env["ENGAGE_API_TOKEN"] == "token" and env["ENGAGE_LOG_JSON"] == "false"
    assert "ENGAGE_DATABASE_URL" not in env  # unset optional settings are left out
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings() == given


def test_the_children_get_the_supervisors_settings_and_no_stray_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ENGAGE_NOT_A_SETTING", "stray")
    supervisor = Supervisor(Settings(home=tmp_path, api_port=0, sms_cap_per_day=7))
    supervisor.bootstrap = "127.0.0.1:1"
    env = supervisor._env()
    assert env["ENGAGE_SMS_CAP_PER_DAY"] == "7"
    assert env["ENGAGE_HOME"] == str(tmp_path.resolve())
    assert env["ENGAGE_PUBLIC_URL"] == supervisor.api_url  # not set: the API's own URL
    assert "ENGAGE_NOT_A_SETTING" not in env
    assert env["PATH"] == os.environ["PATH"]


@pytest.mark.parametrize(
    ("utc_hour", "window"),
    [(12, "12:00-14:00"), (22, None), (3, None)],
    ids=["day", "late", "night"],
)
def test_the_demo_makes_the_current_hour_quiet_in_its_own_settings(
    utc_hour: int, window: str | None
) -> None:
    """December: London is on UTC."""
    settings = Settings()
    chosen, note = _demo_quiet_hours(settings, datetime(2026, 12, 3, utc_hour, 30, tzinfo=UTC))
    assert chosen.sms_quiet_hours == (window or "21:00-09:00")
    assert (note is not None) == (window is not None)
    assert "ENGAGE_SMS_QUIET_HOURS" not in os.environ
    given = Settings(sms_quiet_hours="")
    assert _demo_quiet_hours(given, datetime(2026, 12, 3, 12, tzinfo=UTC)) == (given, None)
