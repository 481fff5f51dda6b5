"""The project's own metadata: what setuptools reads from pyproject.toml."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.licenses import canonicalize_license_expression
from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_license_is_an_spdx_expression_that_setuptools_reads_without_a_warning() -> None:
    """A `license = { text = ... }` table is deprecated by setuptools (a warning on every
    install); an SPDX string needs setuptools 77 or later to build."""
    data = tomllib.loads(PYPROJECT.read_text())
    license_ = data["project"]["license"]
    assert isinstance(license_, str)
    assert canonicalize_license_expression(license_) == license_ == "AGPL-3.0-or-later"
    (setuptools,) = [
        r for r in map(Requirement, data["build-system"]["requires"]) if r.name == "setuptools"
    ]
    assert not setuptools.specifier.contains(Version("76.9"))
    assert setuptools.specifier.contains(Version("77.0"))
