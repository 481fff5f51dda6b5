"""How long a group member SIGKILLed and restarted at once waits for partitions on the embedded
broker (Tansu): doing nothing (the group waits out the dead member's 10 s session) against
removing the dead member with a LeaveGroup on its behalf (``infra.membership``), as
`engage up`'s supervisor does; alone in its group, and beside a surviving member.

Usage: ``.venv/bin/python scripts/rejoin.py [--rounds 2]`` (one line per case: seconds from
the SIGKILL to the restarted member's first assignment, and to every partition being owned
again; the members are separate processes with the pipeline's consumer settings).
``--pipeline [--stream-workers 2]``: the same for the real stream worker under `engage up`'s
supervisor (SIGKILL of the ``stream`` child to its restart's first ``stream.assigned`` with
partitions), with the supervisor's LeaveGroup turned off and on."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOPIC = "supporter.signup"
ROLE = "rejoin"


async def _member(bootstrap: str, group: str) -> None:
    from infra.kafka import CONSUMER_DEFAULTS, group_consumer
    from infra.membership import member_client_id

    consumer = group_consumer(bootstrap, group, member_client_id(ROLE), CONSUMER_DEFAULTS, TOPIC)
    await consumer.start()
    seen: list[int] | None = None
    while True:
        await consumer.getmany(timeout_ms=50)
        now = sorted(tp.partition for tp in consumer.assignment())
        if now != seen:
            seen = now
            print(json.dumps({"t": time.time(), "partitions": now}), flush=True)


class Member:
    """A member process and the partitions it last said it holds."""

    def __init__(self, bootstrap: str, group: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--member", bootstrap, group],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.partitions: list[int] = []
        self.first_assigned: float | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            update = json.loads(line)
            self.partitions = update["partitions"]
            if self.partitions and self.first_assigned is None:
                self.first_assigned = update["t"]

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def _until(check: object, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit("timed out: the group did not settle")
        time.sleep(0.02)


def one_case(bootstrap: str, partitions: int, peers: int, leave: bool) -> tuple[float, float]:
    """Seconds from the SIGKILL to the restarted member's first partitions, and to every
    partition owned by exactly one live member again."""
    from infra.membership import member_client_id, remove_members

    group = f"rejoin-{peers}-{leave}-{time.time_ns()}"
    survivors = [Member(bootstrap, group) for _ in range(peers)]
    victim = Member(bootstrap, group)
    everyone = [*survivors, victim]

    def whole(members: list[Member]) -> bool:
        owned = sorted(p for m in members for p in m.partitions)
        return owned == list(range(partitions)) and all(m.partitions for m in members)

    try:
        _until(lambda: whole(everyone))
        time.sleep(3)  # a few heartbeats
        killed = time.time()
        victim.kill()
        if leave:
            remove_members(bootstrap, group, member_client_id(ROLE, victim.process.pid))
        restarted = Member(bootstrap, group)
        everyone = [*survivors, restarted]
        _until(lambda: whole(everyone))
        done = time.time()
        assert restarted.first_assigned is not None
        return restarted.first_assigned - killed, done - killed
    finally:
        for member in everyone:
            if member.process.poll() is None:
                member.kill()


def _assigned(log: Path) -> int:
    """How many ``stream.assigned`` lines with partitions the stream log holds."""
    if not log.exists():
        return 0
    lines = [json.loads(x) for x in log.read_text().splitlines() if '"stream.assigned"' in x]
    return sum(1 for x in lines if x.get("topic_partitions"))


def pipeline_case(workers: int, leave: bool, rounds: int) -> list[float]:
    """Seconds from SIGKILL of the ``stream`` child to its restart's first assignment."""
    import tempfile

    from engage.processes import Supervisor
    from infra.settings import Settings

    took: list[float] = []
    with tempfile.TemporaryDirectory(prefix="engage-rejoin-") as home:
        settings = Settings(home=Path(home), api_port=0, log_json=True, stream_workers=workers)
        supervisor = Supervisor(settings)
        if not leave:
            supervisor._remove_member = lambda role, pid: None  # type: ignore[method-assign]
        stop = threading.Event()
        supervisor.start()
        watcher = threading.Thread(target=supervisor.watch, args=(stop,), daemon=True)
        watcher.start()
        log = Path(home) / "logs" / "stream.log"
        try:
            _until(lambda: _assigned(log) >= 1, 60)
            for _ in range(rounds):
                seen = _assigned(log)
                time.sleep(3)  # a few heartbeats
                killed = time.monotonic()
                os.kill(supervisor.children["stream"].process.pid, signal.SIGKILL)
                _until(lambda seen=seen: _assigned(log) > seen, 60)
                took.append(time.monotonic() - killed)
        finally:
            stop.set()
            watcher.join(5)
            supervisor.stop()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--member", nargs=2, metavar=("BOOTSTRAP", "GROUP"))
    parser.add_argument("--pipeline", action="store_true")
    parser.add_argument("--stream-workers", type=int, default=1)
    args = parser.parse_args()
    if args.member:
        asyncio.run(_member(*args.member))
        return
    if args.pipeline:
        for leave in (False, True):
            took = pipeline_case(args.stream_workers, leave, args.rounds)
            print(
                f"engage up, {args.stream_workers} stream worker(s), "
                f"{'LeaveGroup by the supervisor' if leave else 'nothing (baseline)':28} "
                f"SIGKILL -> restarted stream worker assigned: "
                + ", ".join(f"{t:.2f}" for t in took)
                + " s",
                flush=True,
            )
        return
    from infra.broker import EmbeddedBroker
    from infra.topics import ensure_topics

    with EmbeddedBroker(log_path=None) as broker:
        ensure_topics(broker.bootstrap, args.partitions)
        for peers in (0, 1):
            for leave in (False, True):
                runs = [
                    one_case(broker.bootstrap, args.partitions, peers, leave)
                    for _ in range(args.rounds)
                ]
                first = statistics.median(r[0] for r in runs)
                whole = statistics.median(r[1] for r in runs)
                print(
                    f"{'alone' if peers == 0 else 'beside a survivor':18} "
                    f"{'LeaveGroup for the dead member' if leave else 'nothing (baseline)':31} "
                    f"SIGKILL -> restarted member assigned {first:5.2f} s, all partitions "
                    f"owned {whole:5.2f} s (median of {args.rounds})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
