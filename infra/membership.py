"""Taking a dead member out of its consumer group at once (LeaveGroup on its behalf).

A member killed outright (SIGKILL, a crash) sends no LeaveGroup: its group waits out the
member's session timeout before it rebalances, and a restarted process gets no partitions
until then. Whoever knows the member died (the supervisor that saw its child exit) asks the
coordinator to remove it instead. The member is found by its client id, which carries the
process id (:func:`member_client_id`), and the coordinator names a member after its client
id (``client_id-uuid``).
Kafka and Tansu both take a LeaveGroup (v0/v1: group and member id) from any connection.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import for_code
from aiokafka.protocol.admin import DescribeGroupsRequest
from aiokafka.protocol.group import LeaveGroupRequest

GROUP_COORDINATOR = 0
"""FindCoordinator's key type for a consumer group."""


def member_client_id(role: str, pid: int | None = None) -> str:
    """The client id a group member of ``role`` runs with: ``role-pid``, so that the member
    of a process that died can be told from its live peers (``pid`` defaults to ours)."""
    return f"{role}-{os.getpid() if pid is None else pid}"


@dataclass(frozen=True, slots=True)
class Member:
    member_id: str
    client_id: str

    def of(self, client_id: str) -> bool:
        """Whether this is the member of the client ``client_id``: Tansu describes members
        with an empty client id, but names them ``client_id-uuid``, as Kafka does."""
        return self.client_id == client_id or self.member_id.startswith(f"{client_id}-")


async def _coordinator(client: AIOKafkaClient, group_id: str) -> int:
    node: int = await client.coordinator_lookup(GROUP_COORDINATOR, group_id)
    return node


async def _members(client: AIOKafkaClient, node: int, group_id: str) -> list[Member]:
    response = await client.send(node, DescribeGroupsRequest([group_id]))
    members: list[Member] = []
    for group in response.groups:
        error = for_code(group[0])
        if error.errno != 0:
            raise error()
        members.extend(Member(m[0], m[1]) for m in group[5])
    return members


async def remove_members_async(
    bootstrap: str, group_id: str, client_id: str, timeout_s: float = 3.0
) -> list[str]:
    """Remove from ``group_id`` every member whose client id is ``client_id``; the member
    ids removed (none if it had left, or never joined)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        async with asyncio.timeout(timeout_s):
            await client.bootstrap()
            node = await _coordinator(client, group_id)
            dead = [m for m in await _members(client, node, group_id) if m.of(client_id)]
            removed = []
            for member in dead:
                response = await client.send(node, LeaveGroupRequest(group_id, member.member_id))
                if response.error_code == 0:  # else UnknownMemberId: it left meanwhile
                    removed.append(member.member_id)
            return removed
    finally:
        await client.close()


def remove_members(
    bootstrap: str, group_id: str, client_id: str, timeout_s: float = 3.0
) -> list[str]:
    """:func:`remove_members_async` for a caller without an event loop (the supervisor).
    Raises ``aiokafka.errors.KafkaError`` or ``TimeoutError`` if the coordinator could not
    be asked."""
    return asyncio.run(remove_members_async(bootstrap, group_id, client_id, timeout_s))
