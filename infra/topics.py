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
    bootstrap: str, partitions: int, specs: tuple[TopicSpec, ...] = TOPICS
) -> list[str]:
    """Create the missing topics; return the names created. Existing topics are left alone."""
    admin = admin_client(bootstrap)
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(spec.name, partitions, 1, topic_configs=spec.configs())
            for spec in specs
            if spec.name not in existing
        ]
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
