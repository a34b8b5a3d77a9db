"""Typed settings of the two workers, read from config/plugins/itel_cabinet_api/workers.yaml.

The workers differ only in what this file holds and in their final stage.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from itel_dagster.settings.env_yaml import load_yaml, parse_model
from itel_dagster.settings.paths import config_dir

WORKERS_FILE = "plugins/itel_cabinet_api/workers.yaml"
TRACKING_WORKER = "itel_cabinet_tracking_worker"
API_WORKER = "itel_cabinet_api_worker"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryPolicySettings(_Strict):
    op_max_retries: int = Field(2, ge=0)
    op_delay_seconds: float = Field(1.0, ge=0)
    run_max_retries: int = Field(1, ge=0)
    run_retry_strategy: Literal["ALL_STEPS", "FROM_FAILURE"] = "ALL_STEPS"


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
    expected_task_id: int = 32513
    # An error record keeps at most this many bytes of the original payload (as its JSON spells
    # it); a longer one is cut, with the original's size and SHA-256 (docs/bad-input.md).
    error_payload_max_bytes: int = Field(262_144, ge=1024, le=1_048_576)
    retry_policy: RetryPolicySettings = RetryPolicySettings()
    # Dedupe looks for an event_id in its record's UTC day and this many days before, so a copy
    # redelivered across midnight is still found (0: the record's own day only).
    dedupe_days: int = Field(1, ge=0, le=31)
    delta_table: str | None = None
    column_mapping: dict[str, str] | None = None

    @model_validator(mode="after")
    def _run_holds_whole_batches(self):
        if self.max_records_per_run < self.batch_size:
            raise ValueError("max_records_per_run must be at least batch_size")
        return self


class WorkersFile(_Strict):
    workers: dict[str, WorkerSettings]

    @model_validator(mode="after")
    def _both_workers(self):
        missing = {TRACKING_WORKER, API_WORKER} - set(self.workers)
        if missing:
            raise ValueError(f"workers {sorted(missing)} are not defined")
        return self


def load_workers(env=None) -> dict[str, WorkerSettings]:
    document = load_yaml(config_dir() / WORKERS_FILE, env)
    return parse_model(WorkersFile, document).workers
