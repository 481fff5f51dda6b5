"""Deterministic benchmark payloads: ~135-byte JSON events keyed by a supporter id."""

from __future__ import annotations

import json
import random

KINDS = ("petition.signed", "event.rsvp", "event.attended", "supporter.signup")
BASE_MS = 1_700_000_000_000


def make_payloads(n: int, supporters: int = 10_000, seed: int = 1) -> list[tuple[bytes, bytes]]:
    """Return n (key, value) pairs; the key is the supporter id, the value ~135 bytes of JSON."""
    rng = random.Random(seed)
    records: list[tuple[bytes, bytes]] = []
    for i in range(n):
        supporter = f"s-{rng.randrange(supporters):08d}"
        event = {
            "event_id": f"e-{seed:04d}-{i:012d}",
            "supporter_id": supporter,
            "type": KINDS[rng.randrange(len(KINDS))],
            "ts": BASE_MS + i * 10,
            "group": f"g-{rng.randrange(100):03d}",
            "source": "sim",
        }
        value = json.dumps(event, separators=(",", ":")).encode()
        records.append((supporter.encode(), value))
    return records
