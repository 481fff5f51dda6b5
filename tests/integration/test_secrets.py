"""Generated secrets on a fresh home: one value for every process, 0600 from the first byte."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path

import pytest

from infra.settings import GENERATED_SECRETS, Settings, create_secret_file


def _read_after(barrier: object, home: str, name: str, out: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    out.put(Settings(home=Path(home)).secret(name))  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _no_secrets_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in GENERATED_SECRETS:
        monkeypatch.delenv(f"ENGAGE_{name.upper()}", raising=False)


def test_processes_racing_on_a_fresh_home_all_read_one_key(tmp_path: Path) -> None:
    """The api and consume children used to be able to create the identity key each, and
    sign opt-out links with one key while checking them with another."""
    context = multiprocessing.get_context("spawn")
    count = 8
    barrier, out = context.Barrier(count), context.Queue()
    workers = [
        context.Process(target=_read_after, args=(barrier, str(tmp_path), "identity_key", out))
        for _ in range(count)
    ]
    for worker in workers:
        worker.start()
    keys = {out.get(timeout=60) for _ in workers}
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    assert len(keys) == 1
    (key,) = keys
    assert len(key) >= 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["identity_key"]  # no temporary left


def test_a_secret_file_is_private_and_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "home" / "api_token"
    assert create_secret_file(path) is True
    first = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert create_secret_file(path) is False
    assert path.read_text() == first


def test_ensure_secrets_creates_what_is_not_set(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, api_token="given")
    settings.ensure_secrets()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["analytics_key", "identity_key"]
    assert settings.secret("api_token") == "given"
    assert settings.secret("identity_key") == (tmp_path / "identity_key").read_text()
    assert settings.secret("analytics_key") == (tmp_path / "analytics_key").read_text()
