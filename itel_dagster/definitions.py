"""The Dagster code location of itel-dagster (workspace.yaml loads `defs` from here).

Loading it must never need a running service: Kafka, ClaimX, iTel and Delta are reached only
when a sensor ticks or a run executes.
"""

from __future__ import annotations

import dagster as dg

from itel_dagster.assets.tracking_table import TRACKING_ASSET, itel_cabinet_task_tracking, tracking_job
from itel_dagster.ops.shared_stage_ops import STAGE_IO
from itel_dagster.resources.claimx_api import ClaimxApiResource
from itel_dagster.resources.delta_tables import DeltaTablesResource
from itel_dagster.resources.kafka import KafkaResource
from itel_dagster.sensors.kafka_worker_sensor import build_kafka_worker_sensor
from itel_dagster.settings.workers import TRACKING_WORKER, load_workers

# A broken workers.yaml fails the code location at load, with the file and key in the message.
WORKERS = load_workers()
_tracking = WORKERS[TRACKING_WORKER]

RESOURCES = {
    "kafka": KafkaResource(),
    "claimx": ClaimxApiResource(),
    "delta": DeltaTablesResource(),
    STAGE_IO: dg.InMemoryIOManager(),
}

defs = dg.Definitions(
    assets=[itel_cabinet_task_tracking],
    jobs=[tracking_job],
    sensors=[
        build_kafka_worker_sensor(_tracking, tracking_job, TRACKING_ASSET,
                                  _tracking.sensor_interval_seconds),
    ],
    resources=RESOURCES,
)
