"""The worker sensor: one run per lane over every partition with work; run states read before
committed offsets, so a run that commits and finishes while a tick is evaluated is never
dispatched again; runs and configs of earlier versions still understood."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest
import yaml
from dagster._core.test_utils import create_run_for_test

from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.ops.shared_stage_ops import KafkaRangeConfig, PartitionRangeConfig
from itel_dagster.sensors import dispatch_state
from itel_dagster.sensors.run_range_tags import (
    KAFKA_PARTITIONS_TAG,
    LANE_TAG,
    WORKER_TAG,
    TaggedRange,
    tagged_ranges,
)
from itel_dagster.settings.workers import WORKERS_FILE

TRACKING = "itel_cabinet_tracking_worker"


def test_a_run_that_finishes_during_a_tick_is_not_dispatched_again(pipeline, monkeypatch):
    pipeline.produce(_recent_records(40, seed=81))  # one UTC day: the tick dispatches them all
    pending = list(pipeline.tick(TRACKING).run_requests)
    assert pending
    read_states = dispatch_state.partitions_in_flight

    def runs_finish_while_the_tick_reads(instance, worker):
        # The queued runs commit their offsets and succeed between the tick's first offset read
        # and its read of the run states: the moment the daemon's race happens.
        while pending:
            assert pipeline.execute(TRACKING, pending.pop()).success
        return read_states(instance, worker)

    monkeypatch.setattr(dispatch_state, "partitions_in_flight", runs_finish_while_the_tick_reads)
    result = pipeline.tick(TRACKING)
    assert pipeline.lag(TRACKING) == 0
    assert list(result.run_requests) == []
    assert "lag 0" in result.skip_reason.skip_message


def _recent_records(count: int, seed: int):
    """Records within one UTC day (today, from 00:15), so one run can hold them all."""
    midnight = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return generate_records(count=count, seed=seed, days=0.01, now=midnight + timedelta(minutes=30))


def test_one_run_covers_every_partition_with_work_and_commits_each(pipeline):
    pipeline.produce(_recent_records(60, seed=82))
    [request] = pipeline.tick(TRACKING).run_requests
    ranges = tagged_ranges(request.tags)
    assert [r.partition for r in ranges] == [0, 1, 2]
    assert sum(r.size for r in ranges) == 60
    assert request.tags[LANE_TAG] == f"{TRACKING}:0"
    assert request.tags[KAFKA_PARTITIONS_TAG] == "0,1,2"
    assert pipeline.execute(TRACKING, request).success
    assert pipeline.committed(TRACKING) == {r.partition: r.end for r in ranges}
    assert pipeline.tracking_table().height == 60
    assert list(pipeline.tick(TRACKING).run_requests) == []


def test_no_second_run_while_the_lane_has_one_in_flight(pipeline):
    pipeline.produce(_recent_records(30, seed=83))
    [request] = pipeline.tick(TRACKING).run_requests
    create_run_for_test(pipeline.instance, job_name="itel_cabinet_tracking_job",
                        status=dg.DagsterRunStatus.STARTED, tags=request.tags)
    pipeline.produce(_recent_records(30, seed=84))
    result = pipeline.tick(TRACKING)
    assert list(result.run_requests) == []
    assert "runs in flight on partitions [0, 1, 2]" in result.skip_reason.skip_message


def _set_worker(pipeline, worker: str, **changes) -> None:
    path = pipeline.root / "config" / WORKERS_FILE
    data = yaml.safe_load(path.read_text())
    data["workers"][worker].update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize("wait_seconds", [0, 5])
def test_a_tick_waits_for_a_run_about_to_end_then_dispatches(pipeline, wait_seconds):
    _set_worker(pipeline, TRACKING, in_flight_wait_seconds=wait_seconds)
    pipeline.produce(_recent_records(30, seed=87))
    [request] = pipeline.tick(TRACKING).run_requests
    busy = create_run_for_test(pipeline.instance, job_name="itel_cabinet_tracking_job",
                               status=dg.DagsterRunStatus.STARTED, tags=request.tags)
    # The in-flight run ends (here: goes away) 1 s into the next tick.
    run_ends = threading.Timer(1.0, pipeline.instance.delete_run, args=[busy.run_id])
    run_ends.start()
    began = time.monotonic()
    result = pipeline.tick(TRACKING)
    waited = time.monotonic() - began
    run_ends.join()
    if wait_seconds:
        [again] = result.run_requests
        assert tagged_ranges(again.tags) == tagged_ranges(request.tags)
        assert waited < wait_seconds  # dispatched when the run ended, not at the deadline
    else:
        assert list(result.run_requests) == []
        assert "runs in flight" in result.skip_reason.skip_message


def test_a_failed_run_of_an_earlier_version_is_read_from_its_tags(pipeline):
    # Runs dispatched before runs covered several partitions carry one range in separate tags.
    pipeline.produce(_recent_records(30, seed=85))
    committed_nothing = pipeline.tick(TRACKING).run_requests[0]
    end = next(r.end for r in tagged_ranges(committed_nothing.tags) if r.partition == 0)
    legacy = {WORKER_TAG: TRACKING, "itel/kafka_partition": "0", "itel/range_start": "0",
              "itel/range_end": str(end), "itel/attempt": "1", "itel/failures_before": "0"}
    assert tagged_ranges(legacy) == [TaggedRange(0, 0, end, 1, 0)]
    create_run_for_test(pipeline.instance, job_name="itel_cabinet_tracking_job",
                        status=dg.DagsterRunStatus.FAILURE,
                        tags={**legacy, "dagster/failure_reason": "STEP_FAILURE"})
    result = pipeline.tick(TRACKING)
    # Partition 0's range failed a moment ago: it waits out the pause; the others go now.
    [request] = result.run_requests
    assert [r.partition for r in tagged_ranges(request.tags)] == [1, 2]


def test_a_run_configured_by_an_earlier_version_still_executes(pipeline):
    pipeline.produce(_recent_records(30, seed=86))
    [request] = pipeline.tick(TRACKING).run_requests
    first = tagged_ranges(request.tags)[0]
    config = request.run_config["ops"]["itel_cabinet_task_tracking"]["ops"]["read_kafka_range"]
    config["config"] = {"worker": TRACKING, "topic": pipeline.tracking.input_topic,
                        "partition": first.partition, "start": first.start, "end": first.end}
    assert pipeline.execute(TRACKING, request).success
    assert pipeline.committed(TRACKING)[first.partition] == first.end
    assert pipeline.tracking_table().height == first.size


@pytest.mark.parametrize("config, problem", [
    (dict(ranges=[PartitionRangeConfig(partition=0, start=0, end=5)], partition=0, start=0, end=5),
     "either ranges or partition/start/end"),
    (dict(ranges=[PartitionRangeConfig(partition=0, start=0, end=5),
                  PartitionRangeConfig(partition=0, start=5, end=9)]), "one range per partition"),
    (dict(ranges=[PartitionRangeConfig(partition=1, start=9, end=5)]), "is not a range"),
    (dict(partition=1, start=0), "needs ranges"),
])
def test_a_malformed_kafka_range_config_fails_with_its_reason(config, problem):
    with pytest.raises(dg.Failure, match=problem):
        KafkaRangeConfig(worker=TRACKING, topic="t", **config).kafka_ranges()


def test_a_range_whose_run_process_died_is_dispatched_again_at_once(pipeline):
    pipeline.produce(_recent_records(30, seed=88))
    [request] = pipeline.tick(TRACKING).run_requests
    run = create_run_for_test(pipeline.instance, job_name="itel_cabinet_tracking_job",
                              status=dg.DagsterRunStatus.STARTED, tags=request.tags)
    # What run monitoring does when the run's process is gone (SIGKILL, out of memory).
    pipeline.instance.report_run_failed(run, "run worker died")

    [again] = pipeline.tick(TRACKING).run_requests  # no 30 s pause: a death is not a verdict

    assert [(r.partition, r.start, r.end) for r in tagged_ranges(again.tags)] == \
        [(r.partition, r.start, r.end) for r in tagged_ranges(request.tags)]
    assert {r.crashes_before for r in tagged_ranges(again.tags)} == {1}
    assert pipeline.execute(TRACKING, again).success
    assert pipeline.lag(TRACKING) == 0


def test_the_primary_workers_runs_carry_the_higher_queue_priority():
    from datetime import date

    from itel_dagster.sensors.dispatch_plan import KafkaRange, PlannedRange, PlannedRun
    from itel_dagster.sensors.kafka_worker_sensor import run_tags
    from itel_dagster.settings.workers import load_workers

    workers = load_workers()
    planned = PlannedRun((PlannedRange(KafkaRange("t", 0, 0, 10), date(2026, 12, 1)),))
    priority = {w.priority: int(run_tags(w, planned)["dagster/priority"]) for w in workers.values()}
    # workers.yaml: the API worker is primary, the tracking worker secondary; maintenance is -1.
    assert workers["itel_cabinet_api_worker"].priority == "primary"
    assert priority["primary"] > priority["secondary"] > -1


def test_a_failed_run_whose_retry_never_came_holds_its_partitions_only_for_the_grace(pipeline):
    from itel_dagster.dagster_seam import WILL_RETRY_TAG

    pipeline.produce(_recent_records(30, seed=91))
    [request] = pipeline.tick(TRACKING).run_requests
    failed = create_run_for_test(pipeline.instance, job_name="itel_cabinet_tracking_job",
                                 status=dg.DagsterRunStatus.STARTED,
                                 tags={**request.tags, WILL_RETRY_TAG: "true"})
    pipeline.instance.report_run_failed(failed)  # died; Dagster's retry is to come
    now = time.time()
    assert dispatch_state.partitions_in_flight(pipeline.instance, TRACKING, now=now) == {0, 1, 2}
    # The daemon that should launch the retry was killed: after the grace the range is free.
    later = now + dispatch_state.RETRY_GRACE_SECONDS + 1
    assert dispatch_state.partitions_in_flight(pipeline.instance, TRACKING, now=later) == set()
