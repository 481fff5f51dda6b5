"""A group member removed on its behalf (infra.membership) against the embedded broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from infra.broker import EmbeddedBroker
from infra.kafka import CONSUMER_DEFAULTS, group_consumer
from infra.membership import member_client_id, remove_members_async
from tests.polling import wait_until_async


def test_only_the_member_of_the_given_process_is_removed(
    broker: EmbeddedBroker, tmp_topic: Callable[..., str], group_id: str
) -> None:
    topic = tmp_topic("members", 2)

    async def scenario() -> tuple[list[str], list[str]]:
        # pids 4242 and 424: one client id a prefix of the other's, as pids can be.
        members = [
            group_consumer(
                broker.bootstrap, group_id, member_client_id("t", pid), CONSUMER_DEFAULTS, topic
            )
            for pid in (4242, 424)
        ]
        for member in members:
            await member.start()
        try:

            async def assigned() -> bool:
                for member in members:
                    await member.getmany(timeout_ms=50)
                return all(member.assignment() for member in members)

            await wait_until_async("both members assigned", assigned)
            unknown = await remove_members_async(broker.bootstrap, group_id, "t-99")
            removed = await remove_members_async(broker.bootstrap, group_id, "t-4242")
            return unknown, removed
        finally:
            for member in members:
                await member.stop()

    unknown, removed = asyncio.run(scenario())
    assert unknown == []
    assert len(removed) == 1 and removed[0].startswith("t-4242-")
