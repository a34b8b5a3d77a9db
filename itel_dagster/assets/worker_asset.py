"""The builders of every worker's two graphs, from its `stages` in workers.yaml:

- its asset, partitioned by UTC day, is the day rebuild (a backfill, Materialize in the UI):
  read_kafka_days -> the stages -> the final stage's backfill ops -> finish_backfill (nothing
  published, no offset committed);
- its live job is a separate op job over the same shared stage ops: read_kafka_range (the
  sensor's Kafka ranges) -> the stages -> the final stage's live ops -> publish_results_and_commit,
  which records the asset's materialization for the run's day.

No op branches on which of the two it runs in: the tables below choose the ops. Each op of the
final stage gets the worker's op retry policy.
"""

from __future__ import annotations

import dagster as dg

from itel_dagster.ops.api_ops import (
    resend_to_itel,
    send_to_itel,
    skip_already_accepted,
    skip_already_sent,
)
from itel_dagster.ops.results_ops import finish_backfill, publish_results_and_commit
from itel_dagster.ops.shared_stage_ops import (
    claimx_lookup,
    read_kafka_days,
    read_kafka_range,
    skip_claimx_lookup,
    transform_events,
    validate_events,
)
from itel_dagster.ops.tracking_ops import replace_tracking_days, write_tracking_rows
from itel_dagster.ops.trigger_ops import (
    count_not_forwarded,
    record_forwarded,
    select_upstream_task_events,
    skip_already_forwarded,
    skip_forwarded_before,
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
# A final stage -> its ops in the live job, in order.
LIVE_FINAL_STAGE_OPS = {
    DELTA_WRITE: (write_tracking_rows,),
    # Skip what the ledger holds, then send in rounds, each round recorded before the next.
    ITEL_API_SEND: (skip_already_sent, send_to_itel),
    # Skip what the forward ledger holds, record the rest; the last op publishes them.
    KAFKA_PUBLISH: (skip_already_forwarded, record_forwarded),
}
# A final stage -> its ops in the asset's day rebuild (nothing is published or committed).
BACKFILL_FINAL_STAGE_OPS = {
    # Each day becomes exactly its re-read events (predicate overwrite).
    DELTA_WRITE: (replace_tracking_days,),
    # A reconciliation: events not accepted yet are sent again.
    ITEL_API_SEND: (skip_already_accepted, resend_to_itel),
    # Counts the day's selected events the forward ledger lacks; publishes nothing.
    KAFKA_PUBLISH: (skip_forwarded_before, count_not_forwarded),
}
# A final stage -> its ops in the dead-letter replay (jobs/dead_letter_replay.py). The trigger has
# no replay (read_dead_letters refuses it).
REPLAY_FINAL_STAGE_OPS = {
    DELTA_WRITE: (write_tracking_rows,),
    ITEL_API_SEND: (skip_already_accepted, resend_to_itel),
}
# The final-stage ops that retry as the worker's retry_policy says. The sends never retry as a
# whole: the sender retries each request, and a rerun would send recorded rounds again.
WORKER_RETRIED_OPS = (write_tracking_rows, replace_tracking_days, skip_already_sent,
                      skip_already_accepted, skip_already_forwarded, skip_forwarded_before,
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


def stage_invocations(settings: WorkerSettings, final_stage_ops: dict) -> list:
    """The ops between the read and the last op, as the graph calls them: the shared stages, then
    the final stage's ops from `final_stage_ops` (live or backfill)."""
    shared = [op for stage in settings.stages[:-1] for op in SHARED_STAGE_OPS[stage]]
    allowed, _ = STAGES_BEFORE[settings.final_stage]
    if "claimx_lookup" in allowed and "claimx_lookup" not in settings.stages:
        shared.append(skip_claimx_lookup)
    final = [op.with_retry_policy(op_retry_policy(settings)) if op in WORKER_RETRIED_OPS else op
             for op in final_stage_ops[settings.final_stage]]
    return [*shared, *final]


def build_worker_asset(settings: WorkerSettings) -> dg.AssetsDefinition:
    """The worker's asset: its Delta table (the tracking table, or the send ledger), one day
    rebuilt from Kafka per run."""
    steps = stage_invocations(settings, BACKFILL_FINAL_STAGE_OPS)

    # Named apart from the asset: the live job's graph carries the asset's name (see there), and
    # node names are unique in a code location.
    @dg.graph(name=f"{settings.asset}_day_rebuild")
    def day_rebuild():
        batch = read_kafka_days()
        for step in steps:
            batch = step(batch)
        return finish_backfill(batch)

    return dg.AssetsDefinition.from_graph(
        day_rebuild,
        keys_by_output_name={"result": dg.AssetKey(settings.asset)},
        partitions_def=daily_partitions,
        group_name=settings.asset_group,
        descriptions_by_output_name={"result": settings.description} if settings.description
        else None,
        # Kinds, as tags (from_graph takes no kinds argument): the UI shows them alike.
        tags_by_output_name={"result": {f"dagster/kind/{kind}": ""
                                        for kind in ("delta", "polars", "kafka")}},
        # A backfill run rebuilds whole days in memory: one day per run keeps its memory bounded.
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
    )


def build_worker_job(settings: WorkerSettings) -> dg.JobDefinition:
    """The worker's live job: one micro-batch (the sensor's Kafka ranges) per run, partitioned by
    day like the asset, whose materialization its last op records."""
    steps = stage_invocations(settings, LIVE_FINAL_STAGE_OPS)

    # One node named like the asset holds the ops, so run config (ops.<asset>.ops.read_kafka_range)
    # and step keys (<asset>.write_tracking_rows) read as they did when the live job was the
    # asset's job: runs launched before the split re-execute from the UI.
    @dg.graph(name=settings.asset)
    def live_micro_batch():
        batch = read_kafka_range()
        for step in steps:
            batch = step(batch)
        publish_results_and_commit(batch)

    @dg.job(
        name=settings.job,
        partitions_def=daily_partitions,
        executor_def=dg.in_process_executor,
        description=f"One micro-batch of {settings.name}: a Kafka range -> "
        + FINAL_STAGE_OUTCOMES[settings.final_stage],
    )
    def live_job():
        live_micro_batch()

    return live_job


def build_backfill_job(settings: WorkerSettings) -> dg.UnresolvedAssetJobDefinition:
    """The asset's day rebuild as a named job, for `dagster job backfill -j ...` (the UI's
    Materialize runs the same asset graph); with the asset's checks, as Materialize runs them."""
    return dg.define_asset_job(
        name=settings.backfill_job,
        selection=dg.AssetSelection.assets(settings.asset),
        executor_def=dg.in_process_executor,
        description=f"Rebuilds day partitions of {settings.asset} from Kafka; publishes nothing "
        "and commits no offsets.",
    )
