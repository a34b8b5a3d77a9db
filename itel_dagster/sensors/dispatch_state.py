"""What a worker's runs have done, read from the Dagster instance: the Kafka partitions with a
run in flight, each partition's last finished run, a failed run's error, and from those and the
group's offsets the dispatch plan. The sensor and the operator commands (`itel-dagster stuck`)
read the same state the same way. Only reads; never launches or commits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone

import dagster as dg

from itel_dagster.alerts.messages import short_error, user_error
from itel_dagster.dagster_seam import AUTO_RETRY_RUN_ID_TAG, WILL_RETRY_TAG
from itel_dagster.kafka.offsets import (
    PartitionProgress,
    first_offset_at_or_after,
    record_timestamp_ms,
)
from itel_dagster.sensors.dispatch_plan import DispatchPlan, LastRun, plan_dispatch
from itel_dagster.sensors.run_range_tags import (
    DEAD_LETTER_TAG,
    WORKER_TAG,
    tagged_partitions,
    tagged_ranges,
)
from itel_dagster.settings.workers import WorkerSettings


IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


# Dagster's daemon launches a run retry within seconds of the failure. A failed run still
# without its retry after this long (the daemon was killed between the failure and the retry)
# holds its partitions no longer: the sensor dispatches the range itself, and a retry that comes
# late is refused at the commit (the group moved).
RETRY_GRACE_SECONDS = 60.0


def partitions_in_flight(instance: dg.DagsterInstance, worker: str,
                         now: float | None = None) -> set[int]:
    """Kafka partitions with a run queued, running, or failed with a run retry still to come
    (within RETRY_GRACE_SECONDS of the failure)."""
    busy: set[int] = set()
    for run in instance.get_runs(
        filters=dg.RunsFilter(tags={WORKER_TAG: worker}, statuses=IN_FLIGHT)
    ):
        busy |= tagged_partitions(run.tags)
    failed = instance.get_run_records(
        filters=dg.RunsFilter(tags={WORKER_TAG: worker, WILL_RETRY_TAG: "true"},
                              statuses=[dg.DagsterRunStatus.FAILURE]),
        limit=50,
    )
    now = time.time() if now is None else now
    for record in failed:
        ended_at = record.end_time or record.update_timestamp.timestamp()
        if (AUTO_RETRY_RUN_ID_TAG not in record.dagster_run.tags
                and now - ended_at < RETRY_GRACE_SECONDS):
            busy |= tagged_partitions(record.dagster_run.tags)
    return busy


# How far back the sensor looks for each partition's last run. A partition with work is in every
# run of its lane, so its last run is among the newest; one missing here finished long ago.
LAST_RUNS_SCANNED = 200


# Dagster tags a run that failed inside its code with why; a run whose process died is marked
# failed by run monitoring without a reason, or with one of these.
FAILURE_REASON_TAG = "dagster/failure_reason"
CODE_FAILURES = {"STEP_FAILURE", "RUN_EXCEPTION", "JOB_INITIALIZATION_FAILURE"}


def died(run: dg.DagsterRun) -> bool:
    """The run failed because its process died (killed, out of memory, node lost), not because
    its code failed. A canceled run (by hand, or past dagster/max_runtime) is not a death."""
    return (run.status == dg.DagsterRunStatus.FAILURE
            and run.tags.get(FAILURE_REASON_TAG) not in CODE_FAILURES)


def last_runs(instance: dg.DagsterInstance, worker: str, partitions: list[int]) -> dict[int, LastRun]:
    """Each partition's most recent finished run, read back from its tags."""
    found: dict[int, LastRun] = {}
    wanted = set(partitions)
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            tags={WORKER_TAG: worker},
            statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE,
                      dg.DagsterRunStatus.CANCELED],
        ),
        limit=LAST_RUNS_SCANNED,
    )
    for record in records:  # newest first
        failed = record.dagster_run.status != dg.DagsterRunStatus.SUCCESS
        ended_at = record.end_time or record.update_timestamp.timestamp()
        ranges = tagged_ranges(record.dagster_run.tags)
        for r in ranges:
            if r.partition in wanted and r.partition not in found:
                found[r.partition] = LastRun(
                    start=r.start, end=r.end, attempt=r.attempt, failed=failed,
                    failures_before=r.failures_before, ended_at=ended_at,
                    suspect_end=r.suspect_end, dead_letter=r.dead_letter,
                    partitions=len(ranges), run_id=record.dagster_run.run_id,
                    failed_run_id=r.failed_run_id, crashed=failed and died(record.dagster_run),
                    crashes_before=r.crashes_before)
        if len(found) == len(wanted):
            break
    return found


def failure_reason(instance: dg.DagsterInstance, run_id: str | None) -> str:
    """The failed run's step errors (else its run failure message), as one short text."""
    if run_id is None:
        return "runs on this record kept failing (no failed run recorded)"
    steps = []
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        event = entry.dagster_event
        error = user_error(event.event_specific_data.error
                           if event and event.event_specific_data else None)
        if error is not None:
            steps.append((event.step_key or "?", error.message))
    run_message = None
    if not steps:
        failures = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        run_message = failures[-1].message if failures else None
    return f"run {run_id}: " + short_error(run_message, steps)


def dead_letters_within(instance: dg.DagsterInstance, worker: str, seconds: float,
                        now: float, at_most: int) -> int:
    """Dead-letter runs of the worker started in the last `seconds` (counted up to at_most)."""
    since = datetime.fromtimestamp(now - seconds, tz=timezone.utc)
    return len(instance.get_run_records(
        filters=dg.RunsFilter(tags={WORKER_TAG: worker, DEAD_LETTER_TAG: "true"},
                              created_after=since),
        limit=at_most))


def isolation_paused(instance: dg.DagsterInstance, worker: WorkerSettings, now: float) -> int:
    """The number of poison records dead-lettered in the last hour when it reached the worker's
    max_poison_per_hour (new isolations pause: so many failing records suggest a failure of the
    system, not of records, and dead-lettering them all would hide it), else 0."""
    recent = dead_letters_within(instance, worker.name, 3600, now, worker.max_poison_per_hour)
    return recent if recent >= worker.max_poison_per_hour else 0


def current_plan(
    instance: dg.DagsterInstance,
    worker: WorkerSettings,
    servers: str,
    read_progress: Callable[[], list[PartitionProgress]],
    now: float,
    partitions: list[int],
) -> tuple[set[int], list[PartitionProgress], DispatchPlan]:
    """(partitions in flight, the group's progress, the plan) as of now, for the topic's
    `partitions`.

    Run states first, offsets after: a run commits before it turns SUCCESS, so offsets read
    after the states are at least as new as they are. Read the other way round, a range whose
    run committed and finished in between looked unfinished and went out again.
    """
    in_flight = partitions_in_flight(instance, worker.name)
    finished = last_runs(instance, worker.name, partitions)
    paused = isolation_paused(instance, worker, now)
    progress = read_progress()
    topic = worker.input_topic
    return in_flight, progress, plan_dispatch(
        topic,
        progress,
        finished,
        in_flight,
        worker.max_records_per_run,
        timestamp_at=lambda p, o: record_timestamp_ms(servers, topic, p, o),
        first_offset_at=lambda p, ms: first_offset_at_or_after(servers, topic, p, ms),
        now=now,
        retry_pause_seconds=worker.redispatch_pause_seconds,
        max_attempts=worker.max_dispatch_attempts,
        lanes=worker.lanes,
        # Paused: failing ranges go stuck after max_attempts, as without isolation.
        isolate_after=10**9 if paused else worker.isolate_after_failures,
        isolation_paused=paused,
    )
