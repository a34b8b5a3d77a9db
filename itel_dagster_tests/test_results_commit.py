"""A run commits only what it read, and never moves a group another run already moved: a zombie
run (or a launchpad run over old offsets) publishes and commits nothing, says why and is counted.
Real broker, both workers, runs as the sensor dispatches them.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.kafka.offsets import PartitionProgress, commit_offsets
from itel_dagster.metrics.exporter import pipeline_registry, render
from itel_dagster.ops.results_ops import group_moved
from itel_dagster.sensors.dispatch_plan import KafkaRange

TRACKING = "itel_cabinet_tracking_worker"
API = "itel_cabinet_api_worker"
# Records of one UTC day, so each tick dispatches one run.
YESTERDAY_EVENING = (datetime.now(timezone.utc) - timedelta(days=1)).replace(
    hour=20, minute=0, second=0, microsecond=0)


def refused_metric(worker: str) -> float:
    [value] = [s.value for family in text_string_to_metric_families(render(pipeline_registry()))
               for s in family.samples
               if s.name == "itel_commits_refused_total" and s.labels == {"worker": worker}]
    return value


def ranges_of(run_config: dict) -> list[dict]:
    [asset_ops] = run_config["ops"].values()
    return asset_ops["ops"]["read_kafka_range"]["config"]["ranges"]


@pytest.mark.parametrize("worker", [TRACKING, API])
def test_a_run_whose_group_another_run_moved_publishes_and_commits_nothing(pipeline, worker):
    pipeline.produce(generate_records(count=12, seed=171, days=0.3, now=YESTERDAY_EVENING))
    [request] = pipeline.tick(worker).run_requests
    moved = max(ranges_of(request.run_config), key=lambda r: r["end"] - r["start"])
    settings = pipeline.workers[worker]
    # The zombie's successor handled the first records of the busiest partition and committed.
    ahead = moved["start"] + 2
    commit_offsets(pipeline.bootstrap, settings.consumer_group, settings.input_topic,
                   {moved["partition"]: ahead})
    before = pipeline.committed(worker)

    result = pipeline.execute(worker, request)

    assert not result.success
    topic = settings.input_topic
    expected = (f"group {settings.consumer_group} is at offset {ahead} on {topic}"
                f"[{moved['partition']}], this run covers {moved['start']}..{moved['end']}: "
                "another run moved it; nothing committed")
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert expected in failure.step_failure_data.error.message
    assert pipeline.committed(worker) == before
    assert pipeline.consume_all(settings.success_topic) == []
    assert pipeline.consume_all(settings.error_topic) == []
    assert refused_metric(worker) == 1
    other = API if worker == TRACKING else TRACKING
    assert refused_metric(other) == 0
    log = Path(settings.log_file).read_text()
    assert any(" ERROR " in line and expected in line for line in log.splitlines())


def test_a_run_over_a_range_past_the_log_end_commits_only_to_the_log_end(pipeline):
    pipeline.produce(generate_records(count=6, seed=172, days=0.3, now=YESTERDAY_EVENING))
    [request] = pipeline.tick(TRACKING).run_requests
    # As a launchpad run edited by hand: each range's end 5 past the log end.
    edited = copy.deepcopy(request.run_config)
    ends = {}
    for r in ranges_of(edited):
        ends[r["partition"]] = r["end"]
        r["end"] += 5

    result = pipeline.execute(TRACKING, dg.RunRequest(
        run_config=edited, partition_key=request.partition_key, tags=request.tags))

    assert result.success
    assert {p: o for p, o in pipeline.committed(TRACKING).items() if p in ends} == ends
    assert pipeline.tracking_table().height == 6


def test_group_moved_accepts_only_the_group_at_the_range_start():
    ranges = (KafkaRange("t", 0, 10, 20), KafkaRange("t", 1, 0, 0))
    at_start = [PartitionProgress(0, 10, 0, 30), PartitionProgress(1, None, 0, 0)]
    assert group_moved("g", ranges, at_start) is None
    # An empty run at the log start of a partition retention emptied (the group below it).
    emptied = (KafkaRange("t", 0, 10, 20), KafkaRange("t", 1, 40, 40))
    assert group_moved("g", emptied, [PartitionProgress(0, 10, 0, 30),
                                      PartitionProgress(1, 7, 40, 40)]) is None
    behind = group_moved("g", ranges, [PartitionProgress(0, 8, 0, 30),
                                       PartitionProgress(1, None, 0, 0)])
    assert behind == ("group g is at offset 8 on t[0], this run covers 10..20: another run moved "
                      "it; nothing committed")
    # A group that never committed: a range above the log start would skip records.
    skipping = group_moved("g", (KafkaRange("t", 0, 5, 9),), [PartitionProgress(0, None, 2, 30)])
    assert skipping.startswith("group g is at no committed offset on t[0], this run covers 5..9")
