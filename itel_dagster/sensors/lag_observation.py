"""A worker's consumer lag as an asset observation, so the asset's Plots tab in the UI draws it
over time. Lag here is what the worker still has to process (from the committed offset, or from
the oldest record Kafka holds); it never reads or commits offsets itself.
"""

from __future__ import annotations

import time

import dagster as dg

from itel_dagster.kafka.offsets import PartitionProgress

# Unchanged figures are recorded again after this long, so a flat line still has fresh points
# (a tick every 10 s would otherwise add ~8,600 identical events a day per worker).
UNCHANGED_RECORD_SECONDS = 300.0
LAG_KEY = "consumer_lag"


def lag_observation(asset_name: str, group: str, topic: str,
                    progress: list[PartitionProgress]) -> dg.AssetObservation:
    ordered = sorted(progress, key=lambda p: p.partition)
    metadata: dict[str, dg.MetadataValue] = {
        LAG_KEY: dg.MetadataValue.int(sum(p.lag for p in ordered)),
        **{f"lag_partition_{p.partition}": dg.MetadataValue.int(p.lag) for p in ordered},
        # JSON keys are strings; null where the group never committed.
        "committed_offsets": dg.MetadataValue.json({str(p.partition): p.committed for p in ordered}),
        "end_offsets": dg.MetadataValue.json({str(p.partition): p.high for p in ordered}),
        "consumer_group": dg.MetadataValue.text(group),
        "topic": dg.MetadataValue.text(topic),
    }
    return dg.AssetObservation(asset_key=asset_name, metadata=metadata)


def _figures(metadata) -> dict:
    return {key: getattr(value, "value", value) for key, value in metadata.items()}


def worth_recording(instance: dg.DagsterInstance, observation: dg.AssetObservation,
                    now: float | None = None) -> bool:
    """Whether the figures differ from the last recorded lag observation of the asset, or that
    one is older than UNCHANGED_RECORD_SECONDS."""
    records = instance.fetch_observations(observation.asset_key, limit=10).records
    for record in records:
        last = record.asset_observation
        if last is None or LAG_KEY not in last.metadata:
            continue  # another kind of observation of the same asset
        if (now or time.time()) - record.timestamp >= UNCHANGED_RECORD_SECONDS:
            return True
        return _figures(last.metadata) != _figures(observation.metadata)
    return True
