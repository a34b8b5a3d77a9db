"""Creates the pipeline's topics, idempotently: existing topics are left exactly as they are."""

from __future__ import annotations

import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from itel_dagster.kafka.client_config import client_config
from itel_dagster.settings.workers import WorkerSettings

DAY_MS = 24 * 3600 * 1000
# Retention per kind of topic, as the product spec sets it.
RETENTION_MS = {"input": 7 * DAY_MS, "success": 3 * DAY_MS, "errors": 30 * DAY_MS}
# Largest record batch the broker takes per kind of topic (max.message.bytes). The results
# producer writes records up to its message.max.bytes (2,000,000): both result topics take 2 MiB,
# above the broker's 1 MiB default; input topics keep the broker's default.
MAX_MESSAGE_BYTES = {"success": 2_097_152, "errors": 2_097_152}


def pipeline_topics(workers: dict[str, WorkerSettings]) -> dict[str, str]:
    """Topic name -> kind (input / success / errors) for every topic the workers use."""
    topics: dict[str, str] = {}
    # A topic one worker reads is an input, whoever else writes it (the trigger's success topic).
    inputs = {worker.input_topic for worker in workers.values()}
    for worker in workers.values():
        for topic, kind in ((worker.input_topic, "input"), (worker.success_topic, "success"),
                            (worker.error_topic, "errors")):
            topics.setdefault(topic, "input" if topic in inputs else kind)
    return topics


def topic_config(kind: str) -> dict[str, str]:
    """The topic-level settings a topic of this kind is created with."""
    config = {"retention.ms": str(RETENTION_MS.get(kind, 7 * DAY_MS))}
    if kind in MAX_MESSAGE_BYTES:
        config["max.message.bytes"] = str(MAX_MESSAGE_BYTES[kind])
    return config


def ensure_topics(
    bootstrap_servers: str, topics: dict[str, str], partitions: int = 3, timeout: float = 30.0
) -> dict[str, bool]:
    """Create the missing topics; returns name -> True if created now, False if it existed."""
    admin = AdminClient(client_config(bootstrap_servers))
    existing = set(admin.list_topics(timeout=timeout).topics)
    created: dict[str, bool] = {name: False for name in topics if name in existing}
    missing = [
        NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=1,
            config=topic_config(kind),
        )
        for name, kind in topics.items()
        if name not in existing
    ]
    if not missing:
        return created
    for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            future.result(timeout)
            created[name] = True
        except KafkaException as exc:
            # Another process may create it between list and create: that is success too.
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            created[name] = False
    _wait_until_served(admin, [t.topic for t in missing], deadline=time.monotonic() + timeout)
    return created


def _wait_until_served(admin: AdminClient, names: list[str], deadline: float) -> None:
    """Until the broker's metadata shows each topic with a leader for every partition: a topic
    the controller has created reaches the brokers' metadata a moment later, and a client that
    produces before then is told UNKNOWN_TOPIC_OR_PART."""
    waiting = set(names)
    while waiting:
        metadata = admin.list_topics(timeout=max(0.1, deadline - time.monotonic())).topics
        waiting = {name for name in waiting if not _served(metadata.get(name))}
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT,
                                            f"topics created but not served yet: {sorted(waiting)}"))
        time.sleep(0.05)


def _served(topic) -> bool:
    return (topic is not None and topic.error is None and bool(topic.partitions)
            and all(p.leader >= 0 and p.error is None for p in topic.partitions.values()))
