"""The asset `itel_api_sends`: the send ledger of the API worker (Delta, daily partitions).

Graph-backed: each micro-batch run reads one Kafka range, runs the shared stages, skips events
the ledger already holds, sends the rest to iTel in rounds and records each round's final outcomes
before the next round goes out.
"""

import dagster as dg

from itel_dagster.ops.api_ops import send_to_itel, skip_already_sent
from itel_dagster.ops.results_ops import publish_results_and_commit
from itel_dagster.ops.shared_stage_ops import (
    claimx_lookup,
    read_kafka_range,
    transform_events,
    validate_events,
)
from itel_dagster.partitions import daily_partitions

API_SENDS_ASSET = "itel_api_sends"


@dg.graph_asset(
    name=API_SENDS_ASSET,
    partitions_def=daily_partitions,
    group_name="itel_api_worker",
    description="Every final outcome of sending ClaimX task 32513 events to the iTel Cabinet API "
    "(accepted / rejected / dead_lettered), one accepted row per event at most.",
    kinds={"delta", "polars", "kafka"},
    # A backfill run rebuilds whole days in memory: one day per run keeps a run's memory bounded.
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
)
def itel_api_sends():
    batch = read_kafka_range()
    enriched = claimx_lookup(validate_events(transform_events(batch)))
    sent = send_to_itel(skip_already_sent(enriched))  # the ledger is written round by round
    return publish_results_and_commit(sent)


api_job = dg.define_asset_job(
    name="itel_cabinet_api_job",
    # Without the asset checks: they read whole days of Kafka, not one micro-batch's range
    # (itel_asset_checks_job runs them).
    selection=dg.AssetSelection.assets(API_SENDS_ASSET).without_checks(),
    executor_def=dg.in_process_executor,
    description="One micro-batch of the API worker: a Kafka range -> iTel Cabinet API.",
)
