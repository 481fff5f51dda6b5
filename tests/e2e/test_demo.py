"""`engage demo` as a user runs it: the summary agrees with the table above it."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import ENGAGE

pytestmark = pytest.mark.slow

_ROW = re.compile(r"^│ (\w+)\s+│ [\w-]+\s+│ (\d+)\s+│")
_SUMMARY = re.compile(r"^\s+nudges: (.*); follow-up tasks: (\d+)$")


def test_the_demo_summary_counts_what_its_decisions_table_counts(tmp_path: Path) -> None:
    """Both are counted once, after the pipeline has drained (they used to be counted at
    different moments: "sent: 32" above a table that said 36)."""
    env = {
        **os.environ,
        "ENGAGE_HOME": str(tmp_path),
        "ENGAGE_API_PORT": "0",
        "COLUMNS": "200",
        "NO_PROXY": "127.0.0.1",
    }
    env.pop("ENGAGE_DATABASE_URL", None)
    env.pop("ENGAGE_KAFKA_BOOTSTRAP", None)
    out = subprocess.run(
        [ENGAGE, "demo", "--supporters", "40", "--seconds", "60", "--seed", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "Sending decisions" in line)
    table: dict[str, int] = {}
    for line in lines[start:]:
        if line.startswith("└"):
            break
        if match := _ROW.match(line):
            table[match[1]] = table.get(match[1], 0) + int(match[2])
    (summary,) = [m for line in lines if (m := _SUMMARY.match(line))]
    said = {state: int(n) for state, n in (part.split() for part in summary[1].split(", "))}
    assert sum(table.values()) > 0, out.stdout  # decisions to count (how many were sent
    # depends on the hour: the traffic ends now, and texts are held in the demo's quiet hours)
    assert said == table
    assert int(summary[2]) > 0  # the simulated traffic made follow-up tasks
