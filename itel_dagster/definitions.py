"""The Dagster code location of itel-dagster (workspace.yaml loads `defs` from here).

Loading it must never need a running service: Kafka, ClaimX, iTel and Delta are reached only
when a sensor ticks or a run executes.
"""

from __future__ import annotations

import dagster as dg

from itel_dagster.checks.checks_job import build_asset_checks_job
from itel_dagster.jobs.dead_letter_replay import itel_dead_letter_replay_job
from itel_dagster.jobs.delta_maintenance import (
    MAINTENANCE_JOBS,
    MAINTENANCE_SCHEDULES,
    MAINTENANCE_SENSORS,
)
from itel_dagster.ops.shared_stage_ops import STAGE_IO
from itel_dagster.resources.from_yaml import build_resources
from itel_dagster.resources.stage_io_manager import stage_io_manager
from itel_dagster.sensors.operations_alerts import itel_operations_alerts
from itel_dagster.sensors.run_failure_alerts import itel_run_failure_alerts
from itel_dagster.settings.workers import load_workers
from itel_dagster.worker_factory import build_workers

# A broken workers.yaml fails the code location at load, with the file and key in the message.
# Each worker's asset, live job, sensor and checks come from its workers.yaml entry; a code
# location reload reads the file again, for the sensors and the runs they start alike.
WORKERS = build_workers(load_workers())
ASSET_CHECKS = [check for worker in WORKERS for check in worker.checks]
asset_checks_job, asset_checks_schedule = build_asset_checks_job(
    ASSET_CHECKS, [worker.settings.asset for worker in WORKERS])

# kafka, claimx, itel and delta from the connection files, once per load (secrets as dg.EnvVar,
# read when a run launches); the sensors get them injected, the runs too.
RESOURCES = {**build_resources(), STAGE_IO: stage_io_manager}

defs = dg.Definitions(
    assets=[worker.asset for worker in WORKERS],
    asset_checks=ASSET_CHECKS,
    jobs=[*(job for worker in WORKERS for job in (worker.job, worker.backfill_job)),
          itel_dead_letter_replay_job, asset_checks_job,
          *MAINTENANCE_JOBS],
    schedules=[asset_checks_schedule, *MAINTENANCE_SCHEDULES],
    sensors=[
        *(worker.sensor for worker in WORKERS),
        itel_run_failure_alerts,
        itel_operations_alerts,
        *MAINTENANCE_SENSORS,
    ],
    resources=RESOURCES,
    # Every job in one process, the implicit asset job of UI backfills too: stage outputs live in
    # memory (STAGE_IO) and never cross processes.
    executor=dg.in_process_executor,
)
