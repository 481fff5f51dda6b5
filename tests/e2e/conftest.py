"""Start `engage up` as a user would, in its own ENGAGE_HOME, and stop it at the end."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.databases import fresh_pg_schema
from tests.polling import wait_until

TOKEN = "e2e-token"
ENGAGE = str(Path(sys.executable).with_name("engage"))  # the console script, as a user runs it


@dataclass
class Pipeline:
    home: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str]

    @property
    def run(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.home / "run.json").read_text())
        return data

    @property
    def url(self) -> str:
        return str(self.run["api_url"])

    def cli(self, *args: str) -> Any:
        out = subprocess.run(
            [ENGAGE, *args],
            env=self.env,
            capture_output=True,
            check=True,
            timeout=60,
        )
        return json.loads(out.stdout)

    def post(self, events: list[dict[str, Any]]) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/events/batch",
            json={"events": events},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )

    def stop(self, sig: int = signal.SIGTERM) -> float:
        started = time.monotonic()
        self.process.send_signal(sig)
        self.process.wait(15)
        return time.monotonic() - started


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def pipeline(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Pipeline]:
    """`engage up` on SQLite, or on PostgreSQL with ``indirect`` parametrisation."""
    with contextlib.ExitStack() as stack:
        database = getattr(request, "param", "sqlite")
        url = stack.enter_context(fresh_pg_schema()) if database == "postgresql" else None
        yield from _pipeline(tmp_path, url)


def _pipeline(tmp_path: Path, database_url: str | None) -> Iterator[Pipeline]:
    env = {
        **os.environ,
        "ENGAGE_HOME": str(tmp_path / "home"),
        "ENGAGE_API_PORT": "0",
        "ENGAGE_API_TOKEN": TOKEN,
        "ENGAGE_IDENTITY_KEY": "e2e-identity-key",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    env.pop("ENGAGE_KAFKA_BOOTSTRAP", None)
    env.pop("ENGAGE_DATABASE_URL", None)
    if database_url:
        env["ENGAGE_DATABASE_URL"] = database_url
    output = tmp_path / "up.out"
    with output.open("wb") as out:
        process = subprocess.Popen([ENGAGE, "up"], env=env, stdout=out, stderr=out)
    pipe = Pipeline(tmp_path / "home", process, env)
    try:
        wait_until(
            "engage up to start",
            lambda: (pipe.home / "run.json").exists() or process.poll() is not None,
            60,
            interval_s=0.5,
        )
        assert process.poll() is None, output.read_text()
        yield pipe
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


def first_journey(day: datetime, person: dict[str, str]) -> list[dict[str, Any]]:
    """A signup with consent to both channels, a petition an hour later and a first meeting a
    day later, as the ingest API takes them: two nudges and a follow-up task."""
    return [
        {
            "type": "supporter.signup",
            "event_time": day.isoformat(),
            "area": "Leeds",
            "consent_email": True,
            "consent_sms": True,
            "consent_wording": "v1",
            **person,
        },
        {
            "type": "petition.signed",
            "event_time": (day + timedelta(hours=1)).isoformat(),
            "petition_id": "leeds-library",
            "petition_title": "Save Leeds library",
            **person,
        },
        {
            "type": "event.attended",
            "event_time": (day + timedelta(days=1)).isoformat(),
            "meeting_id": "leeds-nov",
            "meeting_title": "Leeds monthly",
            **person,
        },
    ]
