"""The root conftest, loaded for every tier (the unit tier too): so it imports no I/O library.

The I/O fixtures (databases, the embedded broker, uvicorn) live in tests/integration/conftest.py;
the end-to-end tier's in tests/e2e/conftest.py.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # kafka-python 3 loads its protocol schemas with importlib.resources.read_text, whose inner
    # open_text call warns from importlib's own module, which pyproject's "kafka.*" filter misses.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:open_text is deprecated:DeprecationWarning:importlib.resources._legacy",
    )
