"""Delta table maintenance as Dagster work, visible in the UI: compaction of day partitions
(a sensor), checkpoints and vacuum with log cleanup (schedules), for every table the workers
write. Settings: config/plugins/itel_cabinet_api/delta_maintenance.yaml.

Maintenance never fails or holds up a live run: its runs queue behind the workers' (lower
dagster/priority), and a commit it loses to a live one backs off and retries (a live MERGE that
loses to a compaction retries on its side, resources/delta_tables.py).
"""

from datetime import date, datetime, timedelta, timezone

import dagster as dg

from itel_dagster.resources.delta_maintenance import (
    Retrying,
    checkpoint,
    compact_day,
    compact_open_day,
    day_file_count,
    open_table,
    set_retention_properties,
    vacuum_and_clean_log,
)
from itel_dagster.resources.delta_tables import DeltaTablesResource
from itel_dagster.settings.maintenance import (
    MaintenanceSettings,
    load_maintenance,
    maintained_tables,
)
from itel_dagster.settings.paths import delta_storage_options
from itel_dagster.settings.workers import load_workers

# A broken or unsafe delta_maintenance.yaml fails the code location at load, naming the key.
MAINTENANCE = load_maintenance()
TABLES = maintained_tables(load_workers())
TABLE_TAG = "itel/delta_table"
# Below the workers' runs (priority 0) in the QueuedRunCoordinator's queue: live runs go first.
MAINTENANCE_TAGS = {"itel/operation": "delta_maintenance", "dagster/priority": "-1"}
IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
             dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def _retrying() -> Retrying:
    return Retrying(MAINTENANCE.max_conflict_retries, MAINTENANCE.conflict_backoff_seconds)


def _open(delta: DeltaTablesResource, name: str):
    return open_table(delta.table_uri(name), delta_storage_options())


class CompactionConfig(dg.Config):
    table: str
    day: str  # ISO date of the day partition


@dg.op(tags={"itel/operation": "delta_compaction"})
def compact_day_partition(context: dg.OpExecutionContext, config: CompactionConfig,
                          delta: DeltaTablesResource) -> None:
    table = _open(delta, config.table)
    if table is None:
        context.log.info("%s does not exist yet: nothing to compact", config.table)
        return
    day, now = date.fromisoformat(config.day), datetime.now(timezone.utc)
    target_size = MAINTENANCE.target_file_mb * 1024 * 1024
    closed_at = datetime(day.year, day.month, day.day, tzinfo=timezone.utc) + timedelta(days=1)
    if now < closed_at + timedelta(hours=MAINTENANCE.closed_day_delay_hours):
        # Live runs still write the day: compacted by write time, so their dedupe skips most of it.
        result = compact_open_day(table, day, now, target_size, _retrying(),
                                  delta_storage_options())
    else:
        result = compact_day(table, day, target_size, _retrying())
    if result.gave_up:
        context.log.warning(
            "%s %s: every one of %d compaction attempts lost to a concurrent commit; the next "
            "sensor tick tries again", config.table, config.day, result.attempts)
    context.add_output_metadata({
        "table": config.table, "day": config.day, "files_before": result.files_before,
        "files_after": result.files_after, "attempts": result.attempts,
        "gave_up_to_concurrent_commits": result.gave_up, "table_version": table.version(),
    })


@dg.job(name="itel_delta_compaction_job", executor_def=dg.in_process_executor,
        tags=MAINTENANCE_TAGS,
        description="Compacts one day partition of one Delta table into files of about "
        "target_file_mb (delta-rs optimize.compact). Started by itel_delta_compaction_sensor.")
def delta_compaction_job():
    compact_day_partition()


def compaction_requests(table_name: str, table, now: datetime,
                        settings: MaintenanceSettings = MAINTENANCE) -> list[dg.RunRequest]:
    """Today's and yesterday's partitions past compact_min_files files (keyed by the table
    version, so a tick at the same version asks nothing new), and each closed day with more than
    one file once, once closed_day_delay_hours have passed since its midnight (a day with one
    file or none has nothing to bin-pack: a fresh deployment asked for a run per table and day)."""
    today = now.date()
    requests = {}  # day -> run_key, one run per day
    for back in range(1, settings.closed_day_lookback_days + 1):
        day = today - timedelta(days=back)
        closed_at = datetime(day.year, day.month, day.day, tzinfo=timezone.utc) + timedelta(days=1)
        if (now >= closed_at + timedelta(hours=settings.closed_day_delay_hours)
                and table is not None and day_file_count(table, day) > 1):
            requests[day] = f"{table_name}:{day}:closed"
    for day in (today, today - timedelta(days=1)):
        if table is not None and day_file_count(table, day) > settings.compact_min_files:
            requests[day] = f"{table_name}:{day}:v{table.version()}"
    return [
        dg.RunRequest(run_key=key, tags={TABLE_TAG: table_name},
                      run_config={"ops": {"compact_day_partition": {
                          "config": {"table": table_name, "day": day.isoformat()}}}})
        for day, key in requests.items()
    ]


@dg.sensor(job=delta_compaction_job, name="itel_delta_compaction_sensor",
           minimum_interval_seconds=MAINTENANCE.compaction_check_seconds,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Counts the files of today's and yesterday's partitions of each table the "
           "workers write and asks for a compaction past compact_min_files; each closed day with "
           "more than one file once.")
def delta_compaction_sensor(context: dg.SensorEvaluationContext, delta: DeltaTablesResource):
    now = datetime.now(timezone.utc)
    requests, busy = [], []
    for name in TABLES:
        running = context.instance.get_runs(
            filters=dg.RunsFilter(job_name=delta_compaction_job.name, statuses=IN_FLIGHT,
                                  tags={TABLE_TAG: name}), limit=1)
        if running:  # one compaction of a table at a time
            busy.append(name)
            continue
        requests.extend(compaction_requests(name, _open(delta, name), now))
    if not requests:
        return dg.SkipReason(f"nothing to compact; compaction in flight: {busy or 'none'}")
    return requests


@dg.op(tags={"itel/operation": "delta_checkpoint"})
def checkpoint_tables(context: dg.OpExecutionContext, delta: DeltaTablesResource) -> None:
    versions = {}
    for name in TABLES:
        table = _open(delta, name)
        if table is not None:
            # The checkpoint drops the tombstones past the retention, so that runs stop loading them.
            set_retention_properties(table, MAINTENANCE.tombstone_retention_hours,
                                     MAINTENANCE.log_retention_hours, _retrying())
            versions[name] = checkpoint(table)
    context.add_output_metadata({f"{name}_checkpoint_version": v for name, v in versions.items()})


@dg.job(name="itel_delta_checkpoint_job", executor_def=dg.in_process_executor,
        tags=MAINTENANCE_TAGS,
        description="Writes a checkpoint of each Delta table at its current version, without "
        "the tombstones past tombstone_retention_hours (every run loads the checkpoint).")
def delta_checkpoint_job():
    checkpoint_tables()


@dg.op(tags={"itel/operation": "delta_vacuum"})
def vacuum_tables(context: dg.OpExecutionContext, delta: DeltaTablesResource) -> None:
    metadata = {}
    for name in TABLES:
        table = _open(delta, name)
        if table is None:
            continue
        outcome = vacuum_and_clean_log(table, MAINTENANCE.vacuum_retention_hours,
                                       MAINTENANCE.tombstone_retention_hours,
                                       MAINTENANCE.log_retention_hours, _retrying())
        metadata.update({f"{name}_{key}": value for key, value in outcome.items()})
    context.add_output_metadata(metadata)


@dg.job(name="itel_delta_vacuum_job", executor_def=dg.in_process_executor, tags=MAINTENANCE_TAGS,
        description="Deletes data files the table no longer references, written more than "
        "vacuum_retention_hours ago and past tombstone_retention_hours, and _delta_log entries "
        "older than log_retention_hours, in each Delta table.")
def delta_vacuum_job():
    vacuum_tables()


delta_checkpoint_schedule = dg.ScheduleDefinition(
    name="itel_delta_checkpoint_schedule", job=delta_checkpoint_job,
    cron_schedule=MAINTENANCE.checkpoint_cron, execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Runs itel_delta_checkpoint_job (checkpoint_cron in delta_maintenance.yaml).")

delta_vacuum_schedule = dg.ScheduleDefinition(
    name="itel_delta_vacuum_schedule", job=delta_vacuum_job,
    cron_schedule=MAINTENANCE.vacuum_cron, execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Runs itel_delta_vacuum_job (vacuum_cron in delta_maintenance.yaml).")

MAINTENANCE_JOBS = [delta_compaction_job, delta_checkpoint_job, delta_vacuum_job]
MAINTENANCE_SCHEDULES = [delta_checkpoint_schedule, delta_vacuum_schedule]
MAINTENANCE_SENSORS = [delta_compaction_sensor]
