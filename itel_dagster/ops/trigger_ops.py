"""The plugin trigger's ops: select the task's events from upstream ClaimX task events, skip those
its forward ledger shows forwarded already, and record the rest in the ledger before the last op
publishes them (keyed by assignment_id) with the offset commit, in one Kafka transaction.

A replayed upstream range (offsets reset, a re-run) publishes no second copy: a ledger row of a
run that succeeded means the event went out with a committed transaction. A ledger row of the
run's own Kafka record written by a run that did not succeed (killed, failed before committing)
means nothing went out: such an event is forwarded again. A backfill never publishes.
"""

from dataclasses import replace

import dagster as dg
import polars as pl

from itel_dagster.ops.shared_stage_ops import STAGE_IO
from itel_dagster.ops.stage_batch import StageBatch
from itel_dagster.resources.delta_tables import DeltaTablesResource, dedupe_since, window_days
from itel_dagster.stages.error_records import error_records
from itel_dagster.stages.task_events import (
    RECORD_COLUMNS,
    forward_ledger_rows,
    forwarded_again,
    select_task_events,
)
from itel_dagster.stages.tracking_rows import with_partition_columns
from itel_dagster.worker_logs import worker_logger


@dg.op(name="select_task_events", out=dg.Out(io_manager_key=STAGE_IO),
       tags={"stage": "select_task_events"})
def select_upstream_task_events(context: dg.OpExecutionContext, batch: StageBatch) -> StageBatch:
    settings = batch.settings
    chosen = settings.task_events
    result = select_task_events(batch.rows, settings.expected_task_id,
                                chosen.lifecycle_statuses, chosen.trigger_name)
    skipped = result.other_tasks + result.other_statuses
    if result.errors.height:
        worker_logger(settings).warning("%d unreadable upstream records go to %s",
                                        result.errors.height, settings.error_topic)
    facts = {"selected": result.selected.height, "skipped_other_tasks": result.other_tasks,
             "skipped_other_statuses": result.other_statuses, "invalid": result.errors.height}
    context.add_output_metadata(facts)
    return batch.next(result.selected,
                      error_records(result.errors, worker=batch.worker, stage="select_task_events"),
                      **facts, skipped=batch.counts.get("skipped", 0) + skipped)


def _succeeded_runs(instance: dg.DagsterInstance, run_ids: list[str]) -> set[str]:
    records = instance.get_run_records(dg.RunsFilter(
        run_ids=run_ids, statuses=[dg.DagsterRunStatus.SUCCESS]))
    return {record.dagster_run.run_id for record in records}


def _forward_ledger(batch: StageBatch,
                    delta: DeltaTablesResource) -> tuple[StageBatch, pl.DataFrame | None]:
    """(the batch with each event_id once, the forward ledger's rows of its events or None)."""
    batch = batch.without_duplicate_deliveries()
    settings = batch.settings
    days = window_days(with_partition_columns(batch.rows).select("year", "month", "day")
                       .unique().rows(), settings.dedupe_days)
    since = dedupe_since(batch.rows["kafka_timestamp"], settings.dedupe_window_hours)
    ledger = delta.rows_present(settings.table, "event_id", batch.rows["event_id"].to_list(), days,
                                ["event_id", "forwarded_by_run", *RECORD_COLUMNS], since=since)
    return batch, ledger


@dg.op(out=dg.Out(io_manager_key=STAGE_IO), tags={"stage": "ledger_check"})
def skip_already_forwarded(
    context: dg.OpExecutionContext, batch: StageBatch, delta: DeltaTablesResource
) -> StageBatch:
    """The live job's check: events the forward ledger holds were published by an earlier run,
    not again (unless that run never committed, see the module). An event read twice in this run
    is forwarded once."""
    if batch.rows.is_empty():
        return batch
    batch, ledger = _forward_ledger(batch, delta)
    if ledger is None:
        return batch
    runs = ledger["forwarded_by_run"].unique().to_list()
    again = forwarded_again(batch.rows, ledger, _succeeded_runs(context.instance, runs))
    return _without_forwarded(context, batch, ledger, again)


@dg.op(out=dg.Out(io_manager_key=STAGE_IO), tags={"stage": "ledger_check"})
def skip_forwarded_before(
    context: dg.OpExecutionContext, batch: StageBatch, delta: DeltaTablesResource
) -> StageBatch:
    """A backfill's check: every event the forward ledger holds counts as forwarded (a backfill
    publishes nothing, so nothing is forwarded again)."""
    if batch.rows.is_empty():
        return batch
    batch, ledger = _forward_ledger(batch, delta)
    if ledger is None:
        return batch
    return _without_forwarded(context, batch, ledger, pl.DataFrame(schema={"event_id": pl.String}))


def _without_forwarded(context: dg.OpExecutionContext, batch: StageBatch, ledger: pl.DataFrame,
                       again: pl.DataFrame) -> StageBatch:
    """The batch less the events in the ledger, except those in `again` (forwarded again)."""
    settings = batch.settings
    forward = (~pl.col("event_id").is_in(ledger["event_id"].implode())
               | pl.col("event_id").is_in(again["event_id"].implode()))
    remaining = batch.rows.filter(forward)
    skipped = batch.rows.height - remaining.height
    log = worker_logger(settings)
    if again.height:
        log.info("%s: %d events recorded by a run that never committed them: forwarded again",
                 batch.source, again.height)
    if skipped:
        log.info("%s: %d events already forwarded, not published again", batch.source, skipped)
    context.add_output_metadata({"already_forwarded": skipped, "forwarded_again": again.height})
    return replace(batch.next(remaining, already_forwarded=skipped,
                              forwarded_again=again.height),
                   already_handled=batch.already_handled + skipped)


@dg.op(out=dg.Out(io_manager_key=STAGE_IO), tags={"stage": "kafka_publish"})
def record_forwarded(
    context: dg.OpExecutionContext, batch: StageBatch, delta: DeltaTablesResource
) -> StageBatch:
    """Ledger rows for the events this run publishes, before the publishing transaction."""
    settings = batch.settings
    if batch.rows.is_empty():
        return batch
    writer = delta.writer(settings.table, key="ledger_key", dedupe_days=settings.dedupe_days)
    result = writer.merge_new_rows(
        forward_ledger_rows(batch.rows, context.run_id),
        since=dedupe_since(batch.rows["kafka_timestamp"], settings.dedupe_window_hours))
    context.add_output_metadata({"ledger_rows_inserted": result.inserted,
                                 "delta_version": result.version, "table_uri": writer.uri})
    return batch.next(batch.rows, ledger_rows_inserted=result.inserted)


@dg.op(out=dg.Out(io_manager_key=STAGE_IO), tags={"stage": "kafka_publish"})
def count_not_forwarded(context: dg.OpExecutionContext, batch: StageBatch) -> StageBatch:
    """A backfill publishes nothing, so it records nothing: it counts the day's selected events
    the forward ledger lacks (not_forwarded)."""
    if batch.rows.height:
        worker_logger(batch.settings).warning(
            "%s: %d selected events are not in the forward ledger (a backfill does not "
            "publish them)", batch.source, batch.rows.height)
    context.add_output_metadata({"not_forwarded": batch.rows.height})
    return batch.next(batch.rows, not_forwarded=batch.rows.height)
