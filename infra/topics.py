"""Topic provisioning: create every catalogue topic up front (the broker never auto-creates)."""

from __future__ import annotations

import time

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
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
    """Create the missing topics; return the names created. Existing topics keep their
    partitions and copies, and get the catalogue's ``retention.ms`` (a retention setting
    changed since they were created applies to them too).

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
        set_retention(admin, [spec for spec in specs if spec.name in existing])
        return created
    finally:
        admin.close()


def set_retention(admin: KafkaAdminClient, specs: list[TopicSpec]) -> None:
    """Set each topic's ``retention.ms`` to the catalogue's, by IncrementalAlterConfigs (Kafka
    2.3 and later, and Tansu, which has no AlterConfigs). Apache Kafka then deletes records
    older than that, a whole segment once its newest record is; Tansu's memory engine keeps
    everything until it stops (docs/privacy.md, "Retention")."""
    if not specs:
        return
    resources = [
        ConfigResource(
            ConfigResourceType.TOPIC, spec.name, configs={"retention.ms": str(spec.retention_ms)}
        )
        for spec in specs
    ]
    answers = admin.alter_configs(resources, raise_on_unknown=False, incremental=True)
    refused = {name: answer for name, answer in answers["topic"].items() if answer != "OK"}
    if refused:
        raise KafkaError(f"retention.ms refused: {refused}")


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
