"""A worker's live job and its asset's day rebuild are separate definitions (issue 19 item 5):
different graphs with their own read, final-stage and last ops, no op branching on a mode; a live
run still records the asset's materialization for its day."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import dagster as dg

from itel_dagster.definitions import WORKERS, defs
from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.jobs.dead_letter_replay import DEAD_LETTER_REPLAY_JOB
from itel_dagster.settings.paths import PROJECT_ROOT
from itel_dagster.settings.workers import DELTA_WRITE, ITEL_API_SEND, KAFKA_PUBLISH, worker_of_job

TRACKING = "itel_cabinet_tracking_worker"
SHARED = {"transform_events"}
# Each final stage's own ops: (live job, asset's day rebuild).
FINAL_OPS = {
    DELTA_WRITE: ({"write_tracking_rows"}, {"replace_tracking_days"}),
    ITEL_API_SEND: ({"skip_already_sent", "send_to_itel"},
                    {"skip_already_accepted", "resend_to_itel"}),
    KAFKA_PUBLISH: ({"skip_already_forwarded", "record_forwarded"},
                    {"skip_forwarded_before", "count_not_forwarded"}),
}


def op_names(job: dg.JobDefinition) -> set[str]:
    """Every op the job runs (nested graphs opened)."""
    return {op.name for op in job.graph.iterate_op_defs()}


def test_the_live_job_and_the_assets_day_rebuild_are_different_graphs_with_their_own_ops():
    for worker in WORKERS:
        settings = worker.settings
        live = defs.resolve_job_def(settings.job)
        backfill = defs.resolve_job_def(settings.backfill_job)
        live_ops, backfill_ops = op_names(live), op_names(backfill)
        live_final, backfill_final = FINAL_OPS[settings.final_stage]
        assert {"read_kafka_range", "publish_results_and_commit", *SHARED, *live_final} \
            <= live_ops, settings.name
        assert {"read_kafka_days", "finish_backfill", *SHARED, *backfill_final} <= backfill_ops
        # Nothing of one in the other: the backfill never publishes nor commits, the live job
        # never rebuilds days.
        assert not live_ops & {"read_kafka_days", "finish_backfill", *backfill_final}
        assert not backfill_ops & {"read_kafka_range", "publish_results_and_commit", *live_final}
        # The live job is an op job of its own (partitioned by day like the asset), not the
        # asset's job: its graph is not the asset's.
        assert live.partitions_def == worker.asset.partitions_def
        assert not live.asset_layer.asset_graph.get_all_asset_keys()
        assert worker.asset.node_def.name != live.graph.node_named(settings.asset).definition.name
        assert settings.asset in {key.to_user_string()
                                  for key in backfill.asset_layer.asset_graph.get_all_asset_keys()}


def test_a_backfill_runs_failure_alert_names_its_worker():
    """Run-failure alerts find the worker by the run's job: the backfill job names it too."""
    for worker in WORKERS:
        assert worker_of_job(worker.settings.backfill_job) == worker.settings
        assert worker_of_job(worker.settings.job) == worker.settings


def test_the_dead_letter_replay_picks_its_own_final_stage_ops():
    replay = op_names(defs.resolve_job_def(DEAD_LETTER_REPLAY_JOB))
    assert {"write_tracking_rows", "skip_already_accepted", "resend_to_itel"} <= replay
    assert not replay & {"publish_results_and_commit", "finish_backfill", "send_to_itel",
                         "skip_already_sent", "replace_tracking_days"}


MODE_BRANCH = re.compile(r"\.mode\s*(==|!=|\bin\b|\bnot in\b)|\bif\s+[\w.]*\.mode\b")


def test_no_op_branches_on_the_batch_mode():
    """StageBatch.mode is a label for logs and metadata; the graphs choose the ops."""
    found = [f"{path.relative_to(PROJECT_ROOT)}:{number}: {line.strip()}"
             for path in sorted((PROJECT_ROOT / "itel_dagster" / "ops").glob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if MODE_BRANCH.search(line)]
    assert not found, "ops branch on StageBatch.mode:\n" + "\n".join(found)


def test_a_live_run_records_the_assets_materialization_for_its_day(pipeline):
    settings = pipeline.tracking
    # Records of one UTC day (yesterday evening), so the tick dispatches runs of that day only.
    evening = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) \
        - timedelta(days=1)
    records = list(generate_records(count=12, seed=91, days=0.2, now=evening.replace(hour=20)))
    [day] = {datetime.fromtimestamp(r.timestamp_ms / 1000, tz=timezone.utc).date()
             for r in records}
    pipeline.produce(records)
    results = pipeline.drain(TRACKING)
    assert results and all(r.success for r in results)
    for result in results:
        run = pipeline.instance.get_run_by_id(result.run_id)
        assert run.job_name == settings.job  # the live job, not the asset's
        [event] = result.get_asset_materialization_events()
        materialization = event.event_specific_data.materialization
        assert materialization.asset_key == dg.AssetKey(settings.asset)
        assert materialization.partition == day.isoformat() == run.tags["dagster/partition"]
        metadata = {k: v.value for k, v in materialization.metadata.items()}
        assert metadata["worker"] == TRACKING and metadata["committed_offsets"]
    assert sum(m.event_specific_data.materialization.metadata["succeeded"].value
               for r in results for m in r.get_asset_materialization_events()) == len(records)
    assert pipeline.instance.get_materialized_partitions(dg.AssetKey(settings.asset)) \
        == {day.isoformat()}
