"""One builder for every worker's asset and live job: a Kafka range read, the worker's `stages`
from workers.yaml as ops in their order, and the last op that publishes results and commits.

The asset is the worker's Delta table (the tracking table, or the API worker's send ledger),
partitioned by UTC day. Each op of the final stage gets the worker's op retry policy.
"""

from __future__ import annotations

import dagster as dg

from itel_dagster.ops.api_ops import send_to_itel, skip_already_sent
from itel_dagster.ops.results_ops import publish_results_and_commit
from itel_dagster.ops.shared_stage_ops import (
    claimx_lookup,
    read_kafka_range,
    skip_claimx_lookup,
    transform_events,
    validate_events,
)
from itel_dagster.ops.tracking_ops import write_tracking_rows
from itel_dagster.ops.trigger_ops import (
    record_forwarded,
    select_upstream_task_events,
    skip_already_forwarded,
)
from itel_dagster.partitions import daily_partitions
from itel_dagster.settings.workers import (
    DELTA_WRITE,
    ITEL_API_SEND,
    KAFKA_PUBLISH,
    STAGES_BEFORE,
    WorkerSettings,
)

# A stage name of workers.yaml -> its ops, in order. The shared ones carry their own policy
# (transient I/O only).
SHARED_STAGE_OPS = {
    "transform": (transform_events,),
    "validate": (validate_events,),
    "claimx_lookup": (claimx_lookup,),
    "select_task_events": (select_upstream_task_events,),
}
FINAL_STAGE_OPS = {
    DELTA_WRITE: (write_tracking_rows,),
    # Skip what the ledger holds, then send in rounds, each round recorded before the next.
    ITEL_API_SEND: (skip_already_sent, send_to_itel),
    # Skip what the forward ledger holds, record the rest; the last op publishes them.
    KAFKA_PUBLISH: (skip_already_forwarded, record_forwarded),
}
# The final-stage ops that retry as the worker's retry_policy says. send_to_itel never retries as
# a whole: its sender retries each request, and a rerun would send recorded rounds again.
WORKER_RETRIED_OPS = (write_tracking_rows, skip_already_sent, skip_already_forwarded,
                      record_forwarded)
# What a worker's live job does with a micro-batch, by final stage (its description).
FINAL_STAGE_OUTCOMES = {
    DELTA_WRITE: "its Delta table.",
    ITEL_API_SEND: "the iTel Cabinet API.",
    KAFKA_PUBLISH: "the seed's events on its success topic.",
}


def op_retry_policy(settings: WorkerSettings) -> dg.RetryPolicy:
    retry = settings.retry_policy
    return dg.RetryPolicy(max_retries=retry.op_max_retries, delay=retry.op_delay_seconds,
                          backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def stage_invocations(settings: WorkerSettings) -> list:
    """The ops between the read and the commit, as the graph calls them."""
    shared = [op for stage in settings.stages[:-1] for op in SHARED_STAGE_OPS[stage]]
    allowed, _ = STAGES_BEFORE[settings.final_stage]
    if "claimx_lookup" in allowed and "claimx_lookup" not in settings.stages:
        shared.append(skip_claimx_lookup)
    final = [op.with_retry_policy(op_retry_policy(settings)) if op in WORKER_RETRIED_OPS else op
             for op in FINAL_STAGE_OPS[settings.final_stage]]
    return [*shared, *final]


def build_worker_asset(settings: WorkerSettings) -> dg.AssetsDefinition:
    steps = stage_invocations(settings)

    @dg.graph_asset(
        name=settings.asset,
        partitions_def=daily_partitions,
        group_name=settings.asset_group,
        description=settings.description or None,
        kinds={"delta", "polars", "kafka"},
        # A backfill run rebuilds whole days in memory: one day per run keeps its memory bounded.
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
    )
    def worker_asset():
        batch = read_kafka_range()
        for step in steps:
            batch = step(batch)
        return publish_results_and_commit(batch)

    return worker_asset


def build_worker_job(settings: WorkerSettings) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        name=settings.job,
        # Without the asset checks: they read whole days of Kafka, not one micro-batch's range
        # (itel_asset_checks_job runs them).
        selection=dg.AssetSelection.assets(settings.asset).without_checks(),
        executor_def=dg.in_process_executor,
        description=f"One micro-batch of {settings.name}: a Kafka range -> "
        + FINAL_STAGE_OUTCOMES[settings.final_stage],
    )
