"""The Dagster code location of itel-dagster (workspace.yaml loads `defs` from here).

Loading it must never need a running service: Kafka, ClaimX, iTel and Delta are reached only
when a sensor ticks or a run executes.
"""

from __future__ import annotations

import dagster as dg

from itel_dagster.assets.itel_api_sends import API_SENDS_ASSET, api_job, itel_api_sends
from itel_dagster.assets.tracking_table import TRACKING_ASSET, itel_cabinet_task_tracking, tracking_job
from itel_dagster.checks.checks_job import ASSET_CHECKS, asset_checks_job, asset_checks_schedule
from itel_dagster.jobs.dead_letter_replay import itel_dead_letter_replay_job
from itel_dagster.jobs.delta_maintenance import (
    MAINTENANCE_JOBS,
    MAINTENANCE_SCHEDULES,
    MAINTENANCE_SENSORS,
)
from itel_dagster.ops.shared_stage_ops import STAGE_IO
from itel_dagster.resources.claimx_api import ClaimxApiResource
from itel_dagster.resources.delta_tables import DeltaTablesResource
from itel_dagster.resources.itel_api import ItelApiResource
from itel_dagster.resources.kafka import KafkaResource
from itel_dagster.resources.stage_io_manager import stage_io_manager
from itel_dagster.sensors.itel_breaker_gate import itel_breaker_gate
from itel_dagster.sensors.kafka_worker_sensor import build_kafka_worker_sensor
from itel_dagster.sensors.operations_alerts import itel_operations_alerts
from itel_dagster.sensors.run_failure_alerts import itel_run_failure_alerts
from itel_dagster.settings.workers import API_WORKER, TRACKING_WORKER, load_workers

# A broken workers.yaml fails the code location at load, with the file and key in the message.
WORKERS = load_workers()
_tracking = WORKERS[TRACKING_WORKER]
_api = WORKERS[API_WORKER]

RESOURCES = {
    "kafka": KafkaResource(),
    "claimx": ClaimxApiResource(),
    "delta": DeltaTablesResource(),
    "itel": ItelApiResource(),
    STAGE_IO: stage_io_manager,
}

defs = dg.Definitions(
    assets=[itel_cabinet_task_tracking, itel_api_sends],
    asset_checks=ASSET_CHECKS,
    jobs=[tracking_job, api_job, itel_dead_letter_replay_job, asset_checks_job, *MAINTENANCE_JOBS],
    schedules=[asset_checks_schedule, *MAINTENANCE_SCHEDULES],
    sensors=[
        build_kafka_worker_sensor(_tracking, tracking_job, TRACKING_ASSET,
                                  _tracking.sensor_interval_seconds),
        build_kafka_worker_sensor(_api, api_job, API_SENDS_ASSET, _api.sensor_interval_seconds,
                                  gate=itel_breaker_gate),
        itel_run_failure_alerts,
        itel_operations_alerts,
        *MAINTENANCE_SENSORS,
    ],
    resources=RESOURCES,
    # Every job in one process, the implicit asset job of UI backfills too: stage outputs live in
    # memory (STAGE_IO) and never cross processes.
    executor=dg.in_process_executor,
)
