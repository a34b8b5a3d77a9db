"""Which Kafka cluster the pipeline talks to: KAFKA_BOOTSTRAP_SERVERS, else the local broker."""

from __future__ import annotations

import os


def bootstrap_servers() -> str:
    """KAFKA_BOOTSTRAP_SERVERS, else the running local broker's address, else a clear error."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if configured:
        return configured
    from itel_dagster.devstack.kafka.broker import local_bootstrap_servers

    return local_bootstrap_servers()


def default_partitions() -> int:
    """ITEL_KAFKA_PARTITIONS (default 3): partitions of topics created by the dev stack."""
    raw = os.environ.get("ITEL_KAFKA_PARTITIONS", "3")
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"ITEL_KAFKA_PARTITIONS must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"ITEL_KAFKA_PARTITIONS must be a positive integer, got {raw!r}")
    return value
