"""Typed settings of the workers, read from config/plugins/itel_cabinet_api/workers.yaml.

A worker is its settings plus its final stage (the last entry of `stages`); the worker factory
(workers/factory.py) builds its asset, job, sensor and checks from them. No worker name is
written anywhere else: code finds a worker by its final stage, asset or job.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from itel_dagster.settings.env_yaml import load_yaml, parse_model
from itel_dagster.settings.paths import config_dir

WORKERS_FILE = "plugins/itel_cabinet_api/workers.yaml"
# The stages every worker shares, in their order; claimx_lookup may be left out (no enrichment).
SHARED_STAGES = ("transform", "validate", "claimx_lookup")
# A worker's last stage says what it does with the events: write them to its Delta table, or
# send them to the iTel Cabinet API (recording each send in its ledger table).
DELTA_WRITE = "delta_write"
ITEL_API_SEND = "itel_api_send"
# ... or publish them to a Kafka topic (the plugin trigger: ClaimX task events -> the seed's
# events on the iTel topic, recording each forwarded event in its ledger table).
KAFKA_PUBLISH = "kafka_publish"
FINAL_STAGES = (DELTA_WRITE, ITEL_API_SEND, KAFKA_PUBLISH)
# Final stage -> (the stages that may precede it, in their order; those of them required).
STAGES_BEFORE = {
    DELTA_WRITE: (SHARED_STAGES, SHARED_STAGES[:2]),
    ITEL_API_SEND: (SHARED_STAGES, SHARED_STAGES[:2]),
    KAFKA_PUBLISH: (("transform", "select_task_events"), ("transform", "select_task_events")),
}


def _spelled(allowed: tuple[str, ...], required: tuple[str, ...]) -> str:
    optional = [s for s in allowed if s not in required]
    if optional:
        return f"{', '.join(required)} and optionally {' and '.join(optional)}"
    return " and ".join([", ".join(required[:-1]), required[-1]] if len(required) > 1 else required)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryPolicySettings(_Strict):
    op_max_retries: int = Field(2, ge=0)
    op_delay_seconds: float = Field(1.0, ge=0)
    run_max_retries: int = Field(1, ge=0)
    run_retry_strategy: Literal["ALL_STEPS", "FROM_FAILURE"] = "ALL_STEPS"


class TaskEventSelection(_Strict):
    # The lifecycle changes (the event's task_status) forwarded; other changes are skipped.
    lifecycle_statuses: list[str] = Field(
        default_factory=lambda: ["assigned", "in_progress", "completed"], min_length=1)
    # The seed event's trigger_name.
    trigger_name: str = "iTel Cabinet Task Tracking"


class WorkerSettings(_Strict):
    name: str
    input_topic: str
    consumer_group: str
    success_topic: str
    error_topic: str
    batch_size: int = Field(ge=1)
    max_records_per_run: int = Field(10_000, ge=1)
    # A run stops reading once its record values reach this many bytes (at least one record is
    # read); the rest stays in Kafka for the next run. Bounds a run's memory when records are large.
    max_bytes_per_run: int = Field(32_000_000, ge=1)
    # A Kafka read fails only when no record arrived for this long, however long the range takes.
    read_stall_seconds: float = Field(30.0, gt=0)
    # Runs of this worker at once: partition p belongs to lane p % lanes, and each run covers
    # every partition of its lane that has work. 1 does the most work per CPU second.
    lanes: int = Field(1, ge=1)
    sensor_interval_seconds: int = Field(10, ge=1, le=300)
    # A tick that finds the lane's run still in flight waits this long for it to end (then
    # dispatches at once) before it gives up until the next tick. Kept well under the sensor
    # timeout (60 s).
    in_flight_wait_seconds: float = Field(0.0, ge=0, le=20)
    # A range whose run failed is dispatched again after redispatch_pause_seconds, doubling
    # each time, at most max_dispatch_attempts times; then its partition is reported stuck.
    redispatch_pause_seconds: float = Field(30.0, ge=0)
    max_dispatch_attempts: int = Field(5, ge=1)
    # Poison isolation: after this many failed runs in a row on one range, the sensor halves the
    # range run by run until the one failing record is found, and dead-letters it (stage poison).
    # At or above max_dispatch_attempts, isolation never starts and the partition goes stuck.
    isolate_after_failures: int = Field(2, ge=1)
    # Once this many poison records were dead-lettered in the last hour, no new isolation starts
    # (failing ranges go stuck and alert): that many failing records point at the system.
    max_poison_per_hour: int = Field(10, ge=1)
    # Dagster's run monitoring fails a run that runs longer (tag dagster/max_runtime).
    max_runtime_seconds: int = Field(900, ge=10)
    log_file: str
    priority: Literal["primary", "secondary"]
    stages: list[str]
    # The worker's asset (its Delta table, or its send ledger), its UI group, and its live job.
    asset: str
    asset_group: str
    job: str
    description: str = ""
    expected_task_id: int = 32513
    # An error record keeps at most this many bytes of the original payload (as its JSON spells
    # it); a longer one is cut, with the original's size and SHA-256 (docs/bad-input.md).
    error_payload_max_bytes: int = Field(262_144, ge=1024, le=1_048_576)
    retry_policy: RetryPolicySettings = RetryPolicySettings()
    # Dedupe looks for an event_id in its record's UTC day and this many days before, so a copy
    # redelivered across midnight is still found (0: the record's own day only).
    dedupe_days: int = Field(1, ge=0, le=31)
    # Within those days, dedupe reads only rows written at most this long before the batch's oldest
    # Kafka timestamp (docs/delta-maintenance.md): a copy of the same record is always found, a
    # copy published again later (a new Kafka timestamp) only within this window.
    dedupe_window_hours: float = Field(1.0, gt=0, le=744)
    delta_table: str | None = None
    column_mapping: dict[str, str] | None = None
    # The select_task_events stage (the trigger): which ClaimX task events of expected_task_id
    # become the seed's events.
    task_events: TaskEventSelection = TaskEventSelection()

    @model_validator(mode="after")
    def _run_holds_whole_batches(self):
        if self.max_records_per_run < self.batch_size:
            raise ValueError("max_records_per_run must be at least batch_size")
        return self

    @model_validator(mode="after")
    def _known_stages(self):
        *shared, final = self.stages or ["?"]
        if final not in FINAL_STAGES:
            raise ValueError(f"stages must end with one final stage of {list(FINAL_STAGES)}, "
                             f"got {self.stages}")
        allowed, required = STAGES_BEFORE[final]
        if shared != [s for s in allowed if s in shared] or not set(required) <= set(shared):
            raise ValueError(f"stages before {final} must be {_spelled(allowed, required)}, "
                             f"in that order; got {shared}")
        return self

    @property
    def final_stage(self) -> str:
        return self.stages[-1]

    @property
    def table(self) -> str:
        """The Delta table the final stage writes: the tracking table, or the send ledger."""
        return self.delta_table or self.asset

    @property
    def backfill_job(self) -> str:
        """The asset's day-rebuild job (`dagster job backfill -j ...`), named after the live job."""
        return f"{self.job.removesuffix('_job')}_backfill_job"


class WorkersFile(_Strict):
    workers: dict[str, WorkerSettings]

    @model_validator(mode="after")
    def _distinct_workers(self):
        if not self.workers:
            raise ValueError("no worker is defined")
        for key, worker in self.workers.items():
            if worker.name != key:
                raise ValueError(f"worker {key!r} has name {worker.name!r}: they must match")
        for field in ("asset", "job", "consumer_group"):
            values = [getattr(w, field) for w in self.workers.values()]
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise ValueError(f"two workers share {field} {repeated}: each needs its own")
        return self


# (file, its mtime and size, the environment it was expanded with) -> the parsed workers: the
# file is read once per process, and again only after it changed.
_loaded: dict[tuple, dict[str, WorkerSettings]] = {}


def load_workers(env=None) -> dict[str, WorkerSettings]:
    path = config_dir() / WORKERS_FILE
    try:
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size,
               tuple(sorted((env if env is not None else os.environ).items())))
    except OSError:
        key = None  # load_yaml says the file is missing, with its path
    if key is None or key not in _loaded:
        document = load_yaml(path, env)
        workers = parse_model(WorkersFile, document).workers
        if key is None:
            return workers
        _loaded.clear()
        _loaded[key] = workers
    return _loaded[key]


def workers_with_final_stage(final_stage: str) -> list[WorkerSettings]:
    return [w for w in load_workers().values() if w.final_stage == final_stage]


def worker_of_asset(asset: str) -> WorkerSettings | None:
    return next((w for w in load_workers().values() if w.asset == asset), None)


def worker_of_job(job: str) -> WorkerSettings | None:
    """The worker whose live job or backfill job this is."""
    return next((w for w in load_workers().values() if job in (w.job, w.backfill_job)), None)
