"""The consumer groups' settings: frozen, so a worker is given its own instead of anyone
changing a shared default."""

from __future__ import annotations

import dataclasses

import pytest

from infra.kafka import CONSUMER_DEFAULTS, ConsumerSettings


def test_the_defaults_cannot_be_changed_and_each_options_dict_is_fresh() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(CONSUMER_DEFAULTS, "session_timeout_ms", 6_000)  # noqa: B010 - frozen
    options = CONSUMER_DEFAULTS.options()
    options["session_timeout_ms"] = 6_000

    assert CONSUMER_DEFAULTS.options()["session_timeout_ms"] == 10_000


def test_a_worker_given_other_settings_keeps_the_pipeline_s_fixed_ones() -> None:
    options = ConsumerSettings(session_timeout_ms=6_000).options()

    assert options["session_timeout_ms"] == 6_000
    assert options["enable_auto_commit"] is False  # offsets are committed after the outputs
    assert options["auto_offset_reset"] == "earliest"
    assert {k: v for k, v in options.items() if k != "session_timeout_ms"} == {
        k: v for k, v in CONSUMER_DEFAULTS.options().items() if k != "session_timeout_ms"
    }
