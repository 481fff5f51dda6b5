"""The mypyc build of the fold is used only while it matches the sources it was built from."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import streams
from streams import compiled


@pytest.fixture
def stamp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "SOURCES"
    monkeypatch.setattr(compiled, "STAMP", path)
    monkeypatch.setattr(compiled, "BUILD", tmp_path)
    monkeypatch.delenv("ENGAGE_INTERPRETED", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return path


def test_a_build_from_the_sources_as_they_are_goes_first(stamp: Path) -> None:
    stamp.write_text(compiled.digest() + "\n")
    package_path = ["/src/streams"]
    assert compiled.use_build(package_path)
    assert package_path == [str(stamp.parent / "streams"), "/src/streams"]
    assert sys.path[-1] == str(stamp.parent)


@pytest.mark.parametrize("stamped", [None, "0" * 64], ids=["no build", "stale build"])
def test_no_build_or_a_stale_one_leaves_the_source(stamp: Path, stamped: str | None) -> None:
    if stamped is not None:
        stamp.write_text(stamped)
    package_path = ["/src/streams"]
    assert not compiled.use_build(package_path)
    assert package_path == ["/src/streams"]


def test_asking_for_the_source_leaves_the_source(
    stamp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stamp.write_text(compiled.digest())
    monkeypatch.setenv("ENGAGE_INTERPRETED", "1")
    package_path = ["/src/streams"]
    assert not compiled.use_build(package_path)
    assert package_path == ["/src/streams"]


def test_an_edit_to_a_source_changes_the_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    before = compiled.digest()
    original = Path.read_bytes
    edited = compiled.ROOT / compiled.SOURCES[-1]
    monkeypatch.setattr(Path, "read_bytes", lambda p: original(p) + (b"#" if p == edited else b""))
    assert compiled.digest() != before


def test_the_fold_in_use_is_the_one_the_package_chose() -> None:
    assert compiled.in_use() == streams.COMPILED_FOLD
