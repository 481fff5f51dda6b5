"""How long one erasure takes in a large store: fills a SQLite file with SUPPORTERS supporters
(an email link each), EVENTS ledger events and a nudge, task and score each, by bulk inserts,
then times ``engage.erasure.erase`` of one supporter by email. Prints the figures as JSON.

    .venv/bin/python scripts/erase_bench.py [--supporters 100000] [--events 1000000]
        [--fill-limit-s 300] [--db PATH]

The fill stops at ``--fill-limit-s`` (the figures then say how much was filled).
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

from engage.erasure import erase
from infra.db import make_engine, migrate, session_factory
from schemas.identity import contact_identity, new_supporter_id

KEY = "bench-key"
AT = "2025-01-01 12:00:00.000000"
CHUNK = 20_000


def email(n: int) -> str:
    return f"person{n}@example.org"


def fill(path: Path, supporters: int, events: int, limit_s: float) -> dict[str, int]:
    started = time.perf_counter()
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    rng = random.Random(7)
    ids = [new_supporter_id(rng) for _ in range(supporters)]
    filled = {"supporters": 0, "ledger": 0}
    for lo in range(0, supporters, CHUNK):
        chunk = range(lo, min(lo + CHUNK, supporters))
        db.executemany(
            "INSERT INTO supporters (supporter_id, email, first_name, postcode, area,"
            " created_at, updated_at) VALUES (?, ?, 'Jo', 'E2 7DJ', 'Hackney', ?, ?)",
            [(ids[n], email(n), AT, AT) for n in chunk],
        )
        db.executemany(
            "INSERT INTO identity_links (identity, supporter_id, created_at) VALUES (?, ?, ?)",
            [(contact_identity(KEY, "email", email(n)), ids[n], AT) for n in chunk],
        )
        db.executemany(
            "INSERT INTO nudges (nudge_id, supporter_id, channel, template, rule,"
            " cause_event_id, context, status, requested_at, created_at, updated_at, attempts,"
            " in_call) VALUES (?, ?, 'email', 'welcome', 'welcome', ?, '{}', 'pending', ?, ?,"
            " ?, 0, 0)",
            [(f"welcome:{ids[n]}", ids[n], uuid.uuid4().hex, AT, AT, AT) for n in chunk],
        )
        db.executemany(
            "INSERT INTO tasks (task_id, supporter_id, kind, reason, due_at, rule,"
            " cause_event_id, status, created_at, priority) VALUES (?, ?, 'call', 'new signer',"
            " ?, 'call', ?, 'open', ?, 'normal')",
            [(f"call:{ids[n]}", ids[n], AT, uuid.uuid4().hex, AT) for n in chunk],
        )
        db.executemany(
            "INSERT INTO supporter_scores (supporter_id, score, rung, as_of, cause_event_id,"
            " updated_at) VALUES (?, 1.0, 'signer', ?, ?, ?)",
            [(ids[n], AT, uuid.uuid4().hex, AT) for n in chunk],
        )
        db.commit()
        filled["supporters"] = chunk.stop
        if time.perf_counter() - started > limit_s:
            return filled
    per = max(1, events // max(1, filled["supporters"]))
    for lo in range(0, events, CHUNK * 5):
        rows = []
        for seq in range(lo, min(lo + CHUNK * 5, events)):
            sid = ids[(seq // per) % filled["supporters"]]
            payload = (
                f'{{"supporter_id":"{sid}","type":"petition.signed","petition_id":"p{seq % 7}"}}'
            )
            rows.append((uuid.uuid4().hex, "petition.signed", sid, payload, AT))
        db.executemany(
            "INSERT INTO ledger (event_id, topic, key, payload, accepted_at, published)"
            " VALUES (?, ?, ?, ?, ?, 1)",
            rows,
        )
        db.commit()
        filled["ledger"] = lo + len(rows)
        if time.perf_counter() - started > limit_s:
            break
    db.execute("ANALYZE")
    db.close()
    filled["fill_s"] = round(time.perf_counter() - started, 1)
    return filled


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--supporters", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--fill-limit-s", type=float, default=300.0)
    parser.add_argument("--db", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or Path(tmp) / "erase-bench.db"
        engine = make_engine(f"sqlite:///{path}")
        migrate(engine)
        filled = fill(path, args.supporters, args.events, args.fill_limit_s)
        sessions = session_factory(engine)
        who = email(filled["supporters"] // 2)
        timings, results = [], []
        for _ in range(2):  # the first erases, the second finds nothing
            started = time.perf_counter()
            results.append(erase(sessions, KEY, who, "bench"))
            timings.append(time.perf_counter() - started)
        engine.dispose()
    print(
        json.dumps(
            {
                **filled,
                "erase_ms": round(timings[0] * 1000, 1),
                "repeat_erase_ms": round(timings[1] * 1000, 1),
                "rows": results[0].rows if results[0] else None,
                "repeat_found_nothing": bool(results[1] and results[1].already_erased),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
