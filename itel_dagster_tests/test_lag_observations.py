"""Each worker sensor records its consumer lag as an observation of the worker's asset, so the
UI plots it over time: per partition, after processing, and while the iTel breaker holds runs."""

from __future__ import annotations

from collections import Counter

import dagster as dg

from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.resources.itel_api import breaker_for
from itel_dagster.kafka.offsets import group_progress
from itel_dagster.sensors.lag_observation import (
    UNCHANGED_RECORD_SECONDS,
    lag_observation,
    worth_recording,
)
from itel_dagster.settings.connections import load_itel_connection

TRACKING = "itel_cabinet_tracking_worker"
API = "itel_cabinet_api_worker"


def lag_figures(event: dg.AssetObservation) -> dict[str, int]:
    return {k: v.value for k, v in event.metadata.items()
            if k == "consumer_lag" or k.startswith("lag_partition_")}


def evaluate_and_store(pipeline, worker: str):
    """What the daemon does with a tick: Dagster's own evaluation of the sensor, then each asset
    event stored as a run-less event (dagster/_daemon/sensor.py)."""
    from itel_dagster.definitions import defs
    from itel_dagster.resources.from_yaml import build_resources

    with dg.build_sensor_context(instance=pipeline.instance,
                                 repository_def=defs.get_repository_def(),
                                 resources=build_resources()) as context:
        data = pipeline.sensor(worker).evaluate_tick(context)
    for event in data.asset_events:
        pipeline.instance.report_runless_asset_event(event)
    return data


def stored_lag(pipeline, asset: str) -> list[dict[str, int]]:
    records = pipeline.instance.fetch_observations(dg.AssetKey(asset), limit=100,
                                                   ascending=True).records
    return [lag_figures(r.asset_observation) for r in records]


def test_tick_observes_lag_per_partition_then_zero_after_draining(pipeline):
    records = list(generate_records(count=60, seed=11, days=1))
    pipeline.produce(records)
    # Records per partition as a plain reader sees them: nothing committed yet, all of it is lag.
    held = Counter(m.partition() for m in pipeline.consume_all(pipeline.tracking.input_topic))
    assert sum(held.values()) == 60

    first = pipeline.tick(TRACKING)
    assert first.run_requests  # the observation rides along with the dispatch
    [observation] = first.asset_events
    assert observation.asset_key == dg.AssetKey("itel_cabinet_task_tracking")
    assert lag_figures(observation) == {
        "consumer_lag": 60, **{f"lag_partition_{p}": held[p] for p in range(3)}}
    assert observation.metadata["committed_offsets"].value == {"0": None, "1": None, "2": None}
    assert observation.metadata["end_offsets"].value == {str(p): held[p] for p in range(3)}
    assert observation.metadata["consumer_group"].value == pipeline.tracking.consumer_group

    assert all(r.success for r in pipeline.drain(TRACKING))  # its last tick saw no lag left
    after = pipeline.instance.fetch_observations(observation.asset_key, limit=1).records[0]
    assert lag_figures(after.asset_observation) == {
        "consumer_lag": 0, "lag_partition_0": 0, "lag_partition_1": 0, "lag_partition_2": 0}
    assert after.asset_observation.metadata["committed_offsets"].value == {
        str(p): held[p] for p in range(3)}
    assert pipeline.tick(TRACKING).asset_events == []  # unchanged since: nothing new


def test_observations_are_stored_when_lag_changes_and_plotted_from_the_instance(pipeline):
    pipeline.produce(list(generate_records(count=40, seed=12, days=1)))
    asset = "itel_cabinet_task_tracking"

    # The daemon's loop: tick, run what it asks for, until the lag is worked off (a partition
    # whose records span two UTC days takes one run per day).
    ticks = 0
    while (data := evaluate_and_store(pipeline, TRACKING)).run_requests:
        ticks += 1
        for request in data.run_requests:
            assert pipeline.execute(TRACKING, request).success
    evaluate_and_store(pipeline, TRACKING)  # nothing changed: nothing new is stored

    series = [s["consumer_lag"] for s in stored_lag(pipeline, asset)]
    assert len(series) == ticks + 1  # one point per tick that changed the figures
    assert series[0] == 40 and series[-1] == 0
    assert series == sorted(series, reverse=True) and len(set(series)) == len(series)
    first = stored_lag(pipeline, asset)[0]
    assert sum(v for k, v in first.items() if k.startswith("lag_partition_")) == 40

    # An unchanged lag is recorded again once the last point is old, so a flat line stays current.
    last = pipeline.instance.fetch_observations(dg.AssetKey(asset), limit=1).records[0]
    assert pipeline.tick(TRACKING).asset_events == []
    tracking = pipeline.tracking
    observation = lag_observation(asset, tracking.consumer_group, tracking.input_topic,
                                  group_progress(pipeline.bootstrap, tracking.consumer_group,
                                                 tracking.input_topic))
    assert worth_recording(pipeline.instance, observation,
                           now=last.timestamp + UNCHANGED_RECORD_SECONDS + 1)
    assert not worth_recording(pipeline.instance, observation, now=last.timestamp + 1)


def test_breaker_gated_tick_still_observes_the_growing_lag(pipeline, itel_simulator):
    pipeline.set_itel(circuit_breaker={"failure_threshold": 3, "cool_down_seconds": 120})
    itel_simulator.clear_stats()
    breaker = breaker_for(load_itel_connection())
    for _ in range(3):
        breaker.record_failure()  # iTel failed three attempts in a row: the breaker opens
    assert breaker.is_open_now()
    pipeline.produce(list(generate_records(count=25, seed=13, days=1)))

    data = evaluate_and_store(pipeline, API)
    assert not data.run_requests and "circuit breaker open" in data.skip_message
    [observation] = data.asset_events
    assert observation.asset_key == dg.AssetKey("itel_api_sends")
    assert lag_figures(observation)["consumer_lag"] == 25
    assert stored_lag(pipeline, "itel_api_sends")[-1]["consumer_lag"] == 25

    pipeline.produce(list(generate_records(count=5, seed=14, days=1)))
    evaluate_and_store(pipeline, API)
    assert [s["consumer_lag"] for s in stored_lag(pipeline, "itel_api_sends")] == [25, 30]
    assert itel_simulator.stats()["total"] == 0  # nothing was sent while it was open
