"""The worker factory: a worker is its workers.yaml entry plus its final stage, and everything
Dagster runs for it (asset, live job, backfill job, Kafka sensor, asset checks) is built here
from those two. The live job and the asset (the day rebuild) are separate graphs
(assets/worker_asset.py).

Adding a worker is adding an entry to workers.yaml; no worker name is written in the code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg

from itel_dagster.assets.worker_asset import (
    build_backfill_job,
    build_worker_asset,
    build_worker_job,
)
from itel_dagster.checks.api_sends_checks import itel_api_send_checks
from itel_dagster.checks.retention_checks import retention_check
from itel_dagster.checks.tracking_checks import delta_write_checks
from itel_dagster.sensors.itel_breaker_gate import itel_breaker_gate
from itel_dagster.sensors.kafka_worker_sensor import Gate, build_kafka_worker_sensor
from itel_dagster.settings.workers import DELTA_WRITE, ITEL_API_SEND, KAFKA_PUBLISH, WorkerSettings


@dataclass(frozen=True)
class FinalStage:
    """What a final stage adds to a worker: its table's checks, and a gate that holds the
    sensor's runs back (e.g. the iTel circuit breaker), if any."""

    checks: Callable[[WorkerSettings], list[dg.AssetChecksDefinition]]
    gate: Gate | None = None


FINAL_STAGE_PARTS = {
    DELTA_WRITE: FinalStage(checks=delta_write_checks),
    ITEL_API_SEND: FinalStage(checks=itel_api_send_checks, gate=itel_breaker_gate),
    # The forward ledger has no day-completeness check: most upstream events are skipped on
    # purpose (other tasks), and the downstream workers' checks cover what was forwarded.
    KAFKA_PUBLISH: FinalStage(checks=lambda settings: []),
}


@dataclass(frozen=True)
class Worker:
    settings: WorkerSettings
    asset: dg.AssetsDefinition  # the day rebuild (backfills, Materialize)
    job: dg.JobDefinition  # the live job: the sensor's micro-batches
    backfill_job: dg.UnresolvedAssetJobDefinition  # the asset's job, by name
    sensor: dg.SensorDefinition
    checks: list[dg.AssetChecksDefinition]


def build_worker(settings: WorkerSettings) -> Worker:
    final = FINAL_STAGE_PARTS[settings.final_stage]
    job = build_worker_job(settings)
    return Worker(
        settings=settings,
        asset=build_worker_asset(settings),
        job=job,
        backfill_job=build_backfill_job(settings),
        sensor=build_kafka_worker_sensor(settings, job, settings.asset,
                                         settings.sensor_interval_seconds, gate=final.gate),
        checks=[*final.checks(settings), retention_check(settings.asset)],
    )


def build_workers(workers: dict[str, WorkerSettings]) -> list[Worker]:
    return [build_worker(settings) for settings in workers.values()]
