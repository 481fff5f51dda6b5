"""Topic provisioning: create every catalogue topic up front (the broker never auto-creates)."""

from __future__ import annotations

import time

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from schemas.catalogue import TOPICS, TopicSpec


def admin_client(bootstrap: str, timeout_s: float = 20.0) -> KafkaAdminClient:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="engage-admin")
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def ensure_topics(
    bootstrap: str,
    partitions: int,
    specs: tuple[TopicSpec, ...] = TOPICS,
    *,
    replication_factor: int = 1,
    min_insync_replicas: int = 1,
) -> list[str]:
    """Create the missing topics; return the names created. Existing topics are left alone.

    ``min_insync_replicas`` above 1 is set on each topic (with acks=all, a write then needs that
    many copies); it may not exceed ``replication_factor``."""
    requests = topic_requests(
        specs,
        partitions,
        replication_factor=replication_factor,
        min_insync_replicas=min_insync_replicas,
    )
    admin = admin_client(bootstrap)
    try:
        existing = set(admin.list_topics())
        wanted = [topic for topic in requests if topic.name not in existing]
        created: list[str] = []
        for topic in wanted:
            try:
                admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()


def topic_requests(
    specs: tuple[TopicSpec, ...],
    partitions: int,
    *,
    replication_factor: int = 1,
    min_insync_replicas: int = 1,
) -> list[NewTopic]:
    """What to ask the broker for: each topic with its partitions, copies and configs
    (``min.insync.replicas`` only above 1, the broker's own default)."""
    if min_insync_replicas > replication_factor:
        raise ValueError(
            f"min.insync.replicas {min_insync_replicas} is more than the replication factor "
            f"{replication_factor}: no write could succeed"
        )
    extra = {"min.insync.replicas": str(min_insync_replicas)} if min_insync_replicas > 1 else {}
    return [
        NewTopic(
            spec.name, partitions, replication_factor, topic_configs={**spec.configs(), **extra}
        )
        for spec in specs
    ]
