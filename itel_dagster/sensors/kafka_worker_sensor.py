"""One sensor factory for both workers: poll the topic with the worker's consumer group and start
one partitioned run per lane, covering the Kafka partition ranges that have work.

It never joins the group (no rebalances) and never commits: it reads committed offsets and
watermarks, and the runs commit after their results are durable. Run requests carry offsets,
never payloads. Each tick also records the group's lag as an observation of the worker's asset.
"""


import time
from collections.abc import Callable

import dagster as dg

from itel_dagster.kafka.client_config import KafkaAccessDenied
from itel_dagster.kafka.offsets import kept_group_progress
from itel_dagster.partitions import daily_partitions
from itel_dagster.resources.from_yaml import resources_changed
from itel_dagster.resources.itel_api import ItelApiResource
from itel_dagster.resources.kafka import KafkaResource
from itel_dagster.sensors.dispatch_plan import PlannedRun
from itel_dagster.sensors.dispatch_state import current_plan, failure_reason, partitions_in_flight
from itel_dagster.sensors.lag_observation import lag_observation, worth_recording
from itel_dagster.sensors.run_range_tags import range_tags
from itel_dagster.sensors.sensor_instance import sensor_instance
from itel_dagster.settings.env_yaml import ConfigError
from itel_dagster.settings.workers import WorkerSettings, load_workers

# Each poll reads the run storage (about 10 ms of CPU on SQLite).
IN_FLIGHT_POLL_SECONDS = 0.5


def partition_key_for(day) -> str:
    """The day's partition key, clamped to the partitions that exist (records stamped before the
    first day, or up to an hour into tomorrow, still get a run)."""
    keys = daily_partitions.get_partition_keys()
    key = day.isoformat()
    return min(max(key, keys[0]), keys[-1])


def range_run_config(worker: WorkerSettings, planned: PlannedRun, asset_name: str,
                     dead_letter_reason: str | None = None) -> dict:
    ranges = [{"partition": r.range.partition, "start": r.range.start, "end": r.range.end}
              for r in planned.ranges]
    config = {"worker": worker.name, "topic": planned.topic, "ranges": ranges}
    if planned.dead_letter:
        config["dead_letter_reason"] = dead_letter_reason or "runs on this record kept failing"
    return {"ops": {asset_name: {"ops": {"read_kafka_range": {"config": config}}}}}


# The QueuedRunCoordinator starts queued runs by this tag, highest first: with more runs queued
# than slots, the primary worker's go before the secondary's (and both before maintenance, -1).
RUN_PRIORITY = {"primary": 10, "secondary": 0}


def run_tags(worker: WorkerSettings, planned: PlannedRun) -> dict[str, str]:
    retry = worker.retry_policy
    return {
        **range_tags(worker.name, planned),
        "dagster/priority": str(RUN_PRIORITY[worker.priority]),
        # Dagster's run monitoring fails a run that outlives this (dagster.yaml run_monitoring).
        "dagster/max_runtime": str(worker.max_runtime_seconds),
        "dagster/max_retries": str(retry.run_max_retries),
        "dagster/retry_strategy": retry.run_retry_strategy,
        # Op failures are retried by the ops' RetryPolicy, then re-dispatched by this sensor;
        # run retries cover only a dead run process, so the two never multiply.
        "dagster/retry_on_asset_or_op_failure": "false",
    }


def settings_changed(worker: WorkerSettings) -> str | None:
    """Why the sensor must not dispatch: workers.yaml no longer says what the code location was
    built from. Runs read the file when they start, so dispatching now would run them with other
    settings than the sensor's; a code location reload applies the edit to both at once."""
    try:
        current = load_workers().get(worker.name)
    except ConfigError as exc:
        return f"workers.yaml cannot be read ({exc}); no runs until it is fixed and reloaded"
    if current == worker:
        return None
    return ("workers.yaml changed since the code location loaded; reload the code location "
            "(Deployment > Reload, or restart dagster dev) to apply it to this sensor and its runs")


# Holds a worker sensor's runs back: given the iTel connection, a reason to start no runs this
# tick (e.g. an open circuit breaker), or None.
Gate = Callable[[ItelApiResource], str | None]


def sensor_name(worker: WorkerSettings) -> str:
    return f"{worker.name.removesuffix('_worker')}_sensor"


def build_kafka_worker_sensor(
    worker: WorkerSettings,
    job,  # the worker's asset job
    asset_name: str,
    minimum_interval_seconds: int = 10,
    gate: Gate | None = None,
) -> dg.SensorDefinition:
    """The worker's Kafka sensor. Dagster injects its resources: the `kafka` cluster and, for a
    gated worker, the `itel` connection, as the code location built them from the files."""

    def evaluate(context: dg.SensorEvaluationContext, kafka: KafkaResource,
                 itel: ItelApiResource | None) -> dg.SensorResult:
        resources = {"kafka": kafka, **({"itel": itel} if itel is not None else {})}
        changed = settings_changed(worker) or resources_changed(resources)
        if changed:
            return dg.SensorResult(skip_reason=changed, cursor=context.cursor)
        servers = kafka.settings()
        instance = sensor_instance(context)
        topic = worker.input_topic
        try:
            progress = kept_group_progress(servers, worker.consumer_group, topic)
        except KafkaAccessDenied as exc:  # retrying cannot help: say why, start nothing
            return dg.SensorResult(skip_reason=str(exc), cursor=context.cursor)
        # Lag over time in the UI (the asset's Plots tab): recorded when it changed, else every
        # few minutes; the daemon stores these events even when the tick skips.
        observation = lag_observation(asset_name, worker.consumer_group, topic, progress)
        lag_events = [observation] if worth_recording(instance, observation) else []
        closed = gate(itel) if gate is not None else None
        if closed:
            lag = sum(p.lag for p in progress)
            return dg.SensorResult(skip_reason=f"{closed}; lag {lag} waits in Kafka",
                                   cursor=context.cursor, asset_events=lag_events)

        def plan_now():
            return current_plan(
                instance, worker, servers,
                lambda: kept_group_progress(servers, worker.consumer_group, topic),
                now=time.time(), partitions=[p.partition for p in progress])

        in_flight, progress, plan = plan_now()
        # A busy lane: wait for its run to end instead of a whole daemon loop (5 s), so
        # back-to-back micro-batches follow each other closely.
        deadline = time.monotonic() + worker.in_flight_wait_seconds
        while (not plan.runs and in_flight and any(p.lag for p in progress)
               and time.monotonic() < deadline):
            time.sleep(IN_FLIGHT_POLL_SECONDS)
            if partitions_in_flight(instance, worker.name) != in_flight:
                in_flight, progress, plan = plan_now()
        for partition in plan.recovered:
            context.log.warning(
                f"{topic}[{partition}]: the last run's process died before committing; "
                "dispatching its range again at once")
        for planned in plan.redispatched:
            r = planned.range
            context.log.warning(
                f"{r.topic}[{r.partition}] from offset {r.start}: {planned.failures_before} run(s) "
                "failed on this range before committing it; dispatching it again")
        requests = []
        for planned in plan.runs:
            reason = None
            for r in planned.ranges:
                if r.dead_letter:
                    reason = failure_reason(instance, r.failed_run_id)
                    context.log.error(
                        f"{r.range.topic}[{r.range.partition}] offset {r.range.start} fails every "
                        f"run on its own: dead-lettering it to {worker.error_topic} ({reason})")
                elif r.suspect_end is not None:
                    context.log.warning(
                        f"{r.range.topic}[{r.range.partition}]: a record before offset "
                        f"{r.suspect_end} fails every run; isolating it, now trying "
                        f"{r.range.start}-{r.range.end} alone")
            requests.append(dg.RunRequest(
                run_key=planned.run_key(worker.name),
                partition_key=partition_key_for(planned.day),
                run_config=range_run_config(worker, planned, asset_name, reason),
                tags=run_tags(worker, planned),
            ))
        for partition, (offset, attempts) in plan.stuck.items():
            context.log.error(
                f"{topic}[{partition}] is stuck at offset {offset}: {attempts} runs failed on it. "
                "Fix the cause and re-execute its last run from the UI, or dead-letter the "
                f"record: itel-dagster skip --worker {worker.name} --partition {partition} "
                f"--offset {offset}")
        paused = None
        if plan.isolation_paused and (plan.stuck or plan.waiting or plan.redispatched):
            paused = (f"poison isolation paused: {plan.isolation_paused} records dead-lettered "
                      f"as poison in the last hour (max_poison_per_hour); failing ranges go stuck")
            context.log.error(f"{paused}. So many failing records point at a failure of the "
                              "system: see `itel-dagster stuck` for the errors")
        lag = sum(p.lag for p in progress)
        skip = None
        if not requests:
            notes = [f"lag {lag}"]
            if in_flight:
                notes.append(f"runs in flight on partitions {sorted(in_flight)}")
            if plan.waiting:
                notes.append("retry pause on partitions " + ", ".join(
                    f"{p} ({s:.0f} s)" for p, s in sorted(plan.waiting.items())))
            if plan.isolating:
                notes.append("isolating a bad record on partitions " + ", ".join(
                    f"{p} ({a}-{b})" for p, (a, b) in sorted(plan.isolating.items())))
            if plan.stuck:
                notes.append("STUCK partitions " + ", ".join(
                    f"{p} at offset {o}" for p, (o, _) in sorted(plan.stuck.items())))
            if paused:
                notes.append(paused)
            skip = "; ".join(notes)
        # The cursor is for people: what was dispatched last. Offsets and runs are the truth.
        cursor = ", ".join(f"{r.range.partition}:{r.range.start}-{r.range.end}"
                           for run in plan.runs for r in run.ranges)
        return dg.SensorResult(run_requests=requests, cursor=cursor or context.cursor,
                               skip_reason=skip, asset_events=lag_events)

    decorate = dg.sensor(
        name=sensor_name(worker),
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Polls {worker.input_topic} for group {worker.consumer_group} and starts "
        f"one run per lane ({worker.lanes}) covering its Kafka partitions' ranges (up to "
        f"{worker.max_records_per_run} records).",
    )
    # Dagster injects a sensor's resources by its parameters' names and types.
    if gate is None:
        @decorate
        def kafka_worker_sensor(context: dg.SensorEvaluationContext,
                                kafka: KafkaResource) -> dg.SensorResult:
            return evaluate(context, kafka, None)

        return kafka_worker_sensor

    @decorate
    def gated_kafka_worker_sensor(context: dg.SensorEvaluationContext, kafka: KafkaResource,
                                  itel: ItelApiResource) -> dg.SensorResult:
        return evaluate(context, kafka, itel)

    return gated_kafka_worker_sensor
