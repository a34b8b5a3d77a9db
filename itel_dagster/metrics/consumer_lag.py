"""Consumer lag gauges, read from Kafka at scrape time for both workers' groups (workers.yaml).

Lag is what the sensors see: records from where processing resumes (the committed offset, or the
oldest record Kafka holds) to the log end. It only reads offsets, never commits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily

from itel_dagster.kafka.offsets import group_progress
from itel_dagster.settings.workers import load_workers

logger = logging.getLogger(__name__)

LABELS = ["group", "topic", "partition"]


def lag_families(bootstrap_servers: str, timeout: float = 5.0) -> Iterator[GaugeMetricFamily]:
    lag = GaugeMetricFamily(
        "itel_consumer_lag", "Records waiting for the group: log end offset minus where "
        "processing resumes.", labels=LABELS)
    committed = GaugeMetricFamily(
        "itel_consumer_committed_offset", "The group's committed offset (next record to "
        "process); absent where it never committed.", labels=LABELS)
    end = GaugeMetricFamily(
        "itel_consumer_log_end_offset", "The partition's log end offset (next offset to be "
        "written).", labels=LABELS)
    up = GaugeMetricFamily(
        "itel_consumer_lag_scrape_success", "1 when the group's offsets were read from Kafka "
        "in this scrape, else 0.", labels=["group", "topic"])
    for worker in load_workers().values():
        group, topic = worker.consumer_group, worker.input_topic
        try:
            progress = group_progress(bootstrap_servers, group, topic, timeout=timeout)
        except Exception as exc:  # Kafka down: the counters are still served
            logger.warning("lag of %s on %s not read: %s: %s", group, topic,
                           type(exc).__name__, exc)
            up.add_metric([group, topic], 0)
            continue
        up.add_metric([group, topic], 1)
        for p in progress:
            labels = [group, topic, str(p.partition)]
            lag.add_metric(labels, p.lag)
            end.add_metric(labels, p.high)
            if p.committed is not None:
                committed.add_metric(labels, p.committed)
    yield from (lag, committed, end, up)
