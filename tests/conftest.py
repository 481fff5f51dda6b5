"""The root conftest, loaded for every tier (the unit tier too): so it imports no I/O library.

The I/O fixtures (databases, the embedded broker, uvicorn) live in tests/integration/conftest.py;
the end-to-end tier's in tests/e2e/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import structlog


def pytest_configure(config: pytest.Config) -> None:
    # kafka-python 3 loads its protocol schemas with importlib.resources.read_text, whose inner
    # open_text call warns from importlib's own module, which pyproject's "kafka.*" filter misses.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:open_text is deprecated:DeprecationWarning:importlib.resources._legacy",
    )


@pytest.fixture(autouse=True)
def _structlog_as_it_was(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A command run in-process (``engage.cli.main``) configures structlog for a terminal and
    caches its loggers: later tests' ``capture_logs`` would see nothing. Here no logger is
    cached, and each test leaves the configuration as it found it."""
    saved = structlog.get_config()
    configure = structlog.configure

    def uncached(**settings: Any) -> None:
        configure(**{**settings, "cache_logger_on_first_use": False})

    monkeypatch.setattr(structlog, "configure", uncached)
    yield
    configure(**saved)
