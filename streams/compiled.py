"""The fold compiled with mypyc, used only while it matches the source it was built from.

The fold's CPU is spread thinly over interpreted Python (docs/stream-stage.md, "Profile after
the cuts"): no one function to rewrite, so `make` compiles ``COMPILED`` with mypyc into
``.mypyc/`` at the project root (``scripts/build_fold.py``), beside a digest of ``SOURCES``:
the compiled modules and the ones whose definitions they were compiled against. ``streams``
puts the build in front of the source only while that digest matches, so an edited source is
never shadowed by a stale build: it runs interpreted until `make` builds again. Both are the
same code; ``ENGAGE_INTERPRETED=1`` asks for the source (to compare, or to rule mypyc out).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / ".mypyc"
STAMP = BUILD / "SOURCES"
GROUP = "engage_fold"
COMPILED = ("streams/scoring.py", "streams/engagement.py")
SOURCES = (*COMPILED, "streams/playbook.py", "schemas/actions.py", "schemas/events.py")


def digest() -> str:
    """What the build must have been made from: a digest of ``SOURCES`` as they are now."""
    hashed = hashlib.sha256()
    for name in SOURCES:
        path = ROOT / name
        hashed.update(name.encode() + b"\0" + (path.read_bytes() if path.exists() else b""))
    return hashed.hexdigest()


def use_build(package_path: list[str]) -> bool:
    """Put the compiled modules in front of ``package_path`` (the ``streams`` package's
    ``__path__``) if they were built from the sources as they are; whether it did."""
    if os.environ.get("ENGAGE_INTERPRETED") or not STAMP.exists():
        return False
    if STAMP.read_text().strip() != digest():
        return False
    sys.path.append(str(BUILD))  # the modules' shared library is a top-level module
    package_path.insert(0, str(BUILD / "streams"))
    return True


def in_use() -> bool:
    """Whether the fold that runs is the compiled one."""
    import streams.engagement

    return not streams.engagement.__file__ or not streams.engagement.__file__.endswith(".py")
