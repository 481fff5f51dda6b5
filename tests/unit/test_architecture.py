"""The pure core reads no clock: time comes in as an argument (import contracts in `make lint`
keep the I/O modules out; this keeps `datetime.now()` and friends out)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE = [
    "streams/scoring.py",
    "streams/playbook.py",
    "streams/engagement.py",
    "streams/analytics.py",
    "consumers/policy.py",
    "consumers/organising/rules.py",
    "consumers/mart/lift.py",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "schemas").glob("*.py")),
]
CLOCK_CALLS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter", "time_ns"}


def clock_calls(source: str) -> list[str]:
    """Calls such as ``datetime.now()``, ``date.today()`` or ``time.time()``: a clock reading
    on the module or class itself (``moment.time()`` on a value is not one)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in CLOCK_CALLS
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in {"datetime", "date", "time"}
        ):
            found.append(f"{node.func.value.id}.{node.func.attr}() at line {node.lineno}")
    return found


def test_the_check_finds_a_clock_reading() -> None:
    assert clock_calls("from datetime import datetime\nx = datetime.now()\n") == [
        "datetime.now() at line 2"
    ]
    assert clock_calls("import time\nx = time.monotonic()\n") == ["time.monotonic() at line 2"]
    assert clock_calls("x = when.replace(hour=1).time()\n") == []


@pytest.mark.parametrize("path", PURE)
def test_a_pure_module_reads_no_clock(path: str) -> None:
    assert clock_calls((ROOT / path).read_text()) == []
