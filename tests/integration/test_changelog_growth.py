"""scripts/changelog_growth.py at a small scale, on its own embedded broker: the changelog keeps
every write (Tansu never compacts), the snapshot one row per supporter, and every restore gives
back exactly the folded states (the program raises otherwise)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from kafka.partitioner import DefaultPartitioner

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "changelog_growth.py"


@pytest.fixture(scope="module")
def changelog_growth() -> ModuleType:
    spec = importlib.util.spec_from_file_location("changelog_growth", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


class _Cluster:
    def __init__(self, partitions: int) -> None:
        self.all = set(range(partitions))

    def topics(self) -> set[str]:
        return {"t"}

    def partitions_for_topic(self, _topic: str) -> set[int]:
        return self.all

    def available_partitions_for_topic(self, _topic: str) -> set[int]:
        return self.all


@pytest.mark.parametrize("partitions", [1, 4, 12])
def test_partitions_as_the_relays_producer_does(
    changelog_growth: ModuleType, partitions: int
) -> None:
    partitioner = DefaultPartitioner()
    cluster = _Cluster(partitions)
    for n in range(200):
        key = f"sup_{n:032x}".encode()
        expected = partitioner.partition("t", key, key, None, None, cluster)
        assert changelog_growth.partition_of(key, partitions) == expected


def test_the_changelog_grows_with_the_history_and_the_snapshot_does_not(
    changelog_growth: ModuleType,
) -> None:
    figures: dict[str, Any] = changelog_growth.changelog_figures(300, 2, runs=1)
    first, second = figures["events_folded"], figures["events_folded_2x"]
    assert first > 300 and second > 0
    assert figures["changelog_records"] == figures["changelog_restore_records_read"] == first
    assert figures["changelog_records_2x"] == first + second
    assert figures["changelog_restore_records_read_2x"] == first + second
    for label in ("", "_2x"):
        assert figures[f"one_per_key_records{label}"] == 300
        assert figures[f"snapshot_rows{label}"] == 300
        assert figures[f"restored_states{label}"] == 300
    assert figures["kafka_estimate_not_measured"]["note"].startswith("estimate, not measured")
