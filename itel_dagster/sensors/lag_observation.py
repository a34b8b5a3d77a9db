"""A worker's consumer lag as an asset observation, so the asset's Plots tab in the UI draws it
over time. Lag here is what the worker still has to process (from the committed offset, or from
the oldest record Kafka holds); it never reads or commits offsets itself.
"""

from __future__ import annotations

import threading
import time
import weakref

import dagster as dg

from itel_dagster.kafka.offsets import PartitionProgress

# Unchanged figures are recorded again after this long, so a flat line still has fresh points
# (a tick every 10 s would otherwise add ~8,600 identical events a day per worker).
UNCHANGED_RECORD_SECONDS = 300.0
LAG_KEY = "consumer_lag"
# What this process recorded last, per instance and asset: (figures, time.time()).
_recorded: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_memory_lock = threading.Lock()


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
    one is older than UNCHANGED_RECORD_SECONDS. A True answer counts as recorded: the event log
    is read only for an asset this process has not recorded yet (after a code server start), not
    on every tick."""
    now = now or time.time()
    figures = _figures(observation.metadata)
    with _memory_lock:
        recorded = _recorded.setdefault(instance, {})
        last = recorded.get(observation.asset_key)
    if last is None:
        last = _last_in_event_log(instance, observation.asset_key)
    if last is not None and now - last[1] < UNCHANGED_RECORD_SECONDS and last[0] == figures:
        return False
    with _memory_lock:
        recorded[observation.asset_key] = (figures, now)
    return True


def _last_in_event_log(instance: dg.DagsterInstance, asset_key: dg.AssetKey):
    """(figures, timestamp) of the asset's last lag observation, or None."""
    for record in instance.fetch_observations(asset_key, limit=10).records:
        last = record.asset_observation
        if last is not None and LAG_KEY in last.metadata:
            return _figures(last.metadata), record.timestamp
    return None  # none, or only other kinds of observation of the same asset
