"""The asset `itel_cabinet_task_tracking`: the Delta table the tracking worker writes.

Graph-backed: each micro-batch run reads one Kafka range and runs the stages as ops. Its day
partition is the UTC day of the range's Kafka timestamps.
"""


import dagster as dg

from itel_dagster.ops.results_ops import publish_results_and_commit
from itel_dagster.ops.shared_stage_ops import (
    claimx_lookup,
    read_kafka_range,
    transform_events,
    validate_events,
)
from itel_dagster.ops.tracking_ops import write_tracking_rows
from itel_dagster.partitions import daily_partitions

TRACKING_ASSET = "itel_cabinet_task_tracking"


@dg.graph_asset(
    name=TRACKING_ASSET,
    partitions_def=daily_partitions,
    group_name="itel_tracking_worker",
    description="ClaimX task 32513 events enriched with ClaimX task details, one row per event_id "
    "(Delta, partitioned by year/month/day of the Kafka timestamp).",
    kinds={"delta", "polars", "kafka"},
    # A backfill run rebuilds whole days in memory: one day per run keeps a run's memory bounded.
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
)
def itel_cabinet_task_tracking():
    batch = read_kafka_range()
    enriched = claimx_lookup(validate_events(transform_events(batch)))
    return publish_results_and_commit(write_tracking_rows(enriched))


tracking_job = dg.define_asset_job(
    name="itel_cabinet_tracking_job",
    # Without the asset checks: they read whole days of Kafka, not one micro-batch's range
    # (itel_asset_checks_job runs them).
    selection=dg.AssetSelection.assets(TRACKING_ASSET).without_checks(),
    executor_def=dg.in_process_executor,
    description="One micro-batch of the tracking worker: a Kafka range -> Delta.",
)
