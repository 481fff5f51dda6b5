"""What Tansu does with static membership (group.instance.id): how long a stream-like member
SIGKILLed and restarted waits before it is assigned again, with and without an instance id.

Usage: ``.venv/bin/python scripts/static_membership.py [--session-ms 10000]`` (prints one line
per case; each member is a separate process, killed with SIGKILL after a few heartbeats)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time


async def _member(bootstrap: str, instance: str, group: str, session_ms: int, stay: bool) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        "supporter.signup",
        bootstrap_servers=bootstrap,
        group_id=group,
        group_instance_id=instance or None,
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=1000,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    started = time.monotonic()
    await consumer.start()
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=50)
    print(f"assigned after {time.monotonic() - started:.2f} s", flush=True)
    if stay:
        await asyncio.sleep(600)
    await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--session-ms", type=int, default=10_000)
    parser.add_argument("--member", nargs=4, metavar=("BOOTSTRAP", "INSTANCE", "GROUP", "STAY"))
    args = parser.parse_args()
    if args.member:
        bootstrap, instance, group, stay = args.member
        asyncio.run(_member(bootstrap, instance, group, args.session_ms, stay == "stay"))
        return
    from infra.broker import EmbeddedBroker
    from infra.topics import ensure_topics

    with EmbeddedBroker(log_path=None) as broker:
        ensure_topics(broker.bootstrap, 2)
        for instance in ("", "stream-1"):
            group = f"static-{instance or 'dynamic'}"

            def member(stay: str, instance: str = instance, group: str = group) -> list[str]:
                return [sys.executable, __file__, "--session-ms", str(args.session_ms),
                        "--member", broker.bootstrap, instance, group, stay]  # fmt: skip

            first = subprocess.Popen(
                member("stay"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
            assert first.stdout is not None
            joined = first.stdout.readline().strip()
            time.sleep(3)  # a few heartbeats
            first.send_signal(signal.SIGKILL)
            first.wait()
            again = subprocess.run(member("leave"), capture_output=True, text=True, timeout=120)
            print(
                f"{instance or 'no instance id'} (session {args.session_ms} ms): first member "
                f"{joined}; after SIGKILL, its restart {again.stdout.strip()}"
            )


if __name__ == "__main__":
    main()
