"""The tracking worker's final stage: write enriched events to the Delta table, exactly once
(write_tracking_rows, the live job and the dead-letter replay), or replace whole days with their
re-read events (replace_tracking_days, the asset's backfill).

Delta unavailable: the op's RetryPolicy retries with backoff and jitter; on its last attempt the
batch's records become error records (stage delta_write), the run commits them to the error
topic and then fails, so the UI and alerts see it while the API worker and later batches go on.
"""


import dagster as dg
import polars as pl

from itel_dagster.crash_points import crash_point
from itel_dagster.ops.shared_stage_ops import STAGE_IO
from itel_dagster.ops.stage_batch import StageBatch
from itel_dagster.resources.delta_tables import DeltaTablesResource, dedupe_since
from itel_dagster.stages.error_records import stage_failures
from itel_dagster.stages.tracking_rows import tracking_rows, with_partition_columns
from itel_dagster.worker_logs import worker_logger

def _success_frame(enriched: pl.DataFrame, table_uri: str, version: int) -> pl.DataFrame:
    """One success record per written event: event_id, its day partition, the table version."""
    return with_partition_columns(enriched).select(
        "event_id", "assignment_id", "task_status", "enrichment_status",
        "kafka_topic", "kafka_partition", "kafka_offset",
        pl.date(pl.col("year"), pl.col("month"), pl.col("day")).cast(pl.String).alias("day_partition"),
        pl.lit(table_uri).alias("delta_table"),
        pl.lit(version, dtype=pl.Int64).alias("delta_version"),
    )


# The worker's op retry policy (workers.yaml retry_policy) is set where its graph is built.
@dg.op(out=dg.Out(io_manager_key=STAGE_IO), tags={"stage": "delta_write"})
def write_tracking_rows(
    context: dg.OpExecutionContext, batch: StageBatch, delta: DeltaTablesResource
) -> StageBatch:
    settings = batch.settings
    writer = delta.writer(settings.table, dedupe_days=settings.dedupe_days)
    # An event read twice in this run (a producer retry): one row, one success record; the
    # later copies count as already handled (duplicates_in_run in the run's metadata).
    batch = batch.without_duplicate_deliveries()
    if batch.rows.is_empty():
        return batch
    rows = tracking_rows(batch.rows, settings.column_mapping or {})
    try:
        result = writer.merge_new_rows(
            rows, since=dedupe_since(batch.rows["kafka_timestamp"], settings.dedupe_window_hours))
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
        log = worker_logger(settings)
        if context.retry_number < settings.retry_policy.op_max_retries:
            log.warning("Delta write of %s failed (attempt %d): %s",
                        batch.source, context.retry_number + 1, problem)
            raise
        log.error("Delta unavailable after %d attempts; %d records of %s go to %s: %s",
                  context.retry_number + 1, batch.rows.height, batch.source,
                  settings.error_topic, problem)
        failures = stage_failures(batch.rows, worker=settings.name, stage="delta_write",
                                  error_type="delta_unavailable", reason=problem)
        return batch.next(batch.rows.clear(), failures, delta_inserted=0,
                          failed_stage_delta_write=1)
    crash_point("after_delta_write", settings.name)
    context.add_output_metadata({
        "rows_inserted": result.inserted,
        "rows_already_present": result.already_present,
        "delta_commits": result.commits,
        "delta_version": result.version,
        "table_uri": writer.uri,
    })
    return batch.next(
        _success_frame(batch.rows, writer.uri, result.version),
        delta_inserted=result.inserted,
        delta_already_present=result.already_present,
        delta_version=result.version,
    )


# The worker's op retry policy is set where its graph is built, as for write_tracking_rows.
@dg.op(out=dg.Out(io_manager_key=STAGE_IO), tags={"stage": "delta_write"})
def replace_tracking_days(
    context: dg.OpExecutionContext, batch: StageBatch, delta: DeltaTablesResource
) -> StageBatch:
    """A backfill: each day partition becomes exactly its re-read events, plus the rows whose
    records Kafka no longer holds. A failure here fails the run (nothing is dead-lettered: the
    records were handled live and stay in Kafka)."""
    settings = batch.settings
    writer = delta.writer(settings.table, dedupe_days=settings.dedupe_days)
    batch = batch.without_duplicate_deliveries()
    rows = None if batch.rows.is_empty() else tracking_rows(batch.rows, settings.column_mapping or {})
    written = kept = removed = attempts = in_earlier_days = 0
    version = -1
    notes = []
    for day, windows in sorted(batch.day_windows.items()):
        day_rows = None
        if rows is not None:
            day_rows = rows.filter((pl.col("year") == day.year) & (pl.col("month") == day.month)
                                   & (pl.col("day") == day.day))
        held = {w.partition: (w.low, w.high) for w in windows}
        result = writer.replace_day(day_rows, (day.year, day.month, day.day), held)
        written, kept, removed = written + result.written, kept + result.kept, removed + result.removed
        attempts, version = max(attempts, result.attempts), max(version, result.version)
        in_earlier_days += result.in_earlier_days
        if result.kept:
            expired = {w.partition: w.low for w in windows if w.low > 0}
            notes.append(
                f"{day}: {result.kept} rows kept as they were, since Kafka no longer holds their "
                f"records (retention; oldest offsets still held: {expired or 'all'}) or they "
                "arrived after the backfill read the day")
    metadata = {
        "rows_written": written,
        "rows_kept_not_reread": kept,
        "rows_removed": removed,
        # Copies redelivered across midnight: the dedupe window's earlier days hold their event.
        "rows_in_earlier_days": in_earlier_days,
        "replace_attempts": attempts,
        "delta_version": version,
        "table_uri": writer.uri,
    }
    if notes:
        metadata["kept_rows_reason"] = "\n".join(notes)
        worker_logger(batch.settings).warning("backfill: %s", "; ".join(notes))
    context.add_output_metadata(metadata)
    successes = _success_frame(batch.rows, writer.uri, version) if rows is not None else batch.rows
    facts = {"kept_rows_reason": metadata["kept_rows_reason"]} if notes else {}
    return batch.next(successes, delta_inserted=written, delta_rows_kept=kept,
                      delta_rows_removed=removed, delta_rows_in_earlier_days=in_earlier_days,
                      delta_version=version, **facts)
