"""The last op of every worker's live job: publish success and error records and commit offsets,
in one Kafka transaction (kafka/results_transaction.py), then record the asset's materialization
for the run's day. The asset's backfill ends in finish_backfill instead: no publish, no commit.

Offsets move past a record only with its outcome's record (after its Delta row or send), and
read_committed readers see a run's records only once its offsets are committed. It never commits
on a count mismatch, nor when the consumer group no longer stands at the start of the run's range
(another run moved it): such a run publishes nothing and commits nothing. Opening the transaction
fences every older run of the lane first, so a zombie can no longer commit after this check.
"""


import time
from functools import partial

import dagster as dg
import polars as pl

from itel_dagster.crash_points import crash_point
from itel_dagster.kafka.offsets import PartitionProgress
from itel_dagster.kafka.results_transaction import Fenced, transactional_id
from itel_dagster.metrics.pipeline_metrics import record_batch_metrics, record_commit_refused
from itel_dagster.metrics.process_memory import peak_rss_mb
from itel_dagster.ops.retention_loss import report_retention_loss
from itel_dagster.ops.stage_batch import StageBatch
from itel_dagster.resources.kafka import KafkaResource
from itel_dagster.sensors.dispatch_plan import KafkaRange
from itel_dagster.settings.workers import KAFKA_PUBLISH
from itel_dagster.stages.error_records import error_record_messages
from itel_dagster.stages.task_events import seed_event_messages
from itel_dagster.worker_logs import worker_logger


MESSAGE_SLICE_ROWS = 1_000
# Error records carry their original payload (up to the 1 MB input maximum before it is cut to
# error_payload_max_bytes): a slice also stops at this many payload bytes, so a run with large
# bad records never encodes them all at once.
MESSAGE_SLICE_BYTES = 2_000_000


def success_messages(successes: pl.DataFrame) -> list[tuple[bytes | None, bytes]]:
    """One JSON record per processed event, keyed by event_id."""
    if successes.is_empty():
        return []
    lines = successes.write_ndjson().splitlines()
    keys = successes["event_id"].to_list()
    return [(key.encode() if key else None, line.encode()) for key, line in zip(keys, lines)]


# How a final stage's success rows become records, where it is not success_messages: the
# trigger's rows are the seed's events, keyed by assignment_id.
SUCCESS_ENCODINGS = {KAFKA_PUBLISH: seed_event_messages}


def slice_bounds(frame: pl.DataFrame, rows: int = MESSAGE_SLICE_ROWS,
                 sized_by: str | None = None,
                 max_bytes: int = MESSAGE_SLICE_BYTES) -> list[tuple[int, int]]:
    """(offset, length) of consecutive slices of at most `rows` rows; with `sized_by`, a slice
    also holds rows starting within one `max_bytes` stretch of that column's bytes (so at most
    max_bytes plus its last row's)."""
    index = pl.int_range(pl.len(), dtype=pl.Int64)
    slice_id = index // rows
    if sized_by is not None:
        size = pl.col(sized_by).str.len_bytes().fill_null(0).cast(pl.Int64)
        bytes_before = size.cum_sum() - size
        slice_id = (bytes_before // max_bytes) * (frame.height // rows + 1) + slice_id
    lengths = frame.select(slice_id.rle().struct.field("len"))["len"]
    return list(zip((lengths.cum_sum() - lengths).to_list(), lengths.to_list()))


def in_slices(frame: pl.DataFrame, messages, rows: int = MESSAGE_SLICE_ROWS,
              sized_by: str | None = None, max_bytes: int = MESSAGE_SLICE_BYTES):
    """The messages of `frame`, encoded a slice at a time: a run never holds every encoded
    message at once (the producer's own buffer is bounded too, see ResultsProducer)."""
    for offset, length in slice_bounds(frame, rows, sized_by, max_bytes):
        yield from messages(frame.slice(offset, length))


def group_moved(group: str, ranges: tuple[KafkaRange, ...],
                progress: list[PartitionProgress]) -> str | None:
    """Why the run must not commit, or None: the group's committed offset on a partition is not
    the run's range start (a group that never committed, or stands below the log start: the
    range must start at or below the log start, where the sensor dispatches it)."""
    where = {p.partition: p for p in progress}
    for r in ranges:
        p = where.get(r.partition)
        if p is None:
            return f"{r.topic}[{r.partition}] is not in the topic; nothing committed"
        if r.start == p.committed:
            continue
        if (p.committed is None or p.committed < p.low) and r.start <= p.low:
            continue
        at = "no committed offset" if p.committed is None else f"offset {p.committed}"
        return (f"group {group} is at {at} on {r.topic}[{r.partition}], this run covers "
                f"{r.start}..{r.end}: another run moved it; nothing committed")
    return None


def already_committed(ranges: tuple[KafkaRange, ...], commit_to: dict[int, int],
                      progress: list[PartitionProgress]) -> bool:
    """The group stands exactly where this run commits, past its range start. In a retry of this
    op, that is its earlier attempt's commit (it reached the broker, then raised: a timeout, a
    lost connection), made with the result records in one transaction."""
    where = {p.partition: p.committed for p in progress}
    return (any(commit_to[r.partition] != r.start for r in ranges)
            and all(where.get(r.partition) == commit_to[r.partition] for r in ranges))


def _refuse(batch: StageBatch, reason: str) -> None:
    """A zombie run (or a launchpad run over old offsets) whose range another run already handled
    fails here, so it neither republishes nor moves the group."""
    settings = batch.settings
    log = worker_logger(settings)
    log.error("%s: %s", batch.source, reason)
    record_commit_refused(settings, log)  # never raises
    raise dg.Failure(reason, allow_retries=False)


def _peak_memory() -> dict:
    """The run process's peak RSS so far (where /proc tells it): near its end, the run's peak."""
    mb = peak_rss_mb()
    return {} if mb is None else {"peak_rss_mb": mb}


def _accounted_for(batch: StageBatch, error_count: int) -> None:
    """Every record read has one outcome, or the run stops here with nothing published."""
    # The API worker's finished sends past its commit point: published by the run that commits them.
    not_sent = batch.counts.get("not_sent", 0) + batch.counts.get("awaiting_commit", 0)
    # Left out on purpose by a stage (the trigger's events of other tasks).
    skipped = batch.counts.get("skipped", 0)
    handled = batch.rows.height + error_count + batch.already_handled + not_sent + skipped
    if handled != batch.counts.get("read", 0):
        raise dg.Failure(
            f"{batch.counts.get('read', 0)} records read but {batch.rows.height} succeeded, "
            f"{error_count} failed, {batch.already_handled} were already handled, {skipped} "
            f"were skipped and {not_sent} were not sent; offsets not committed",
            allow_retries=False,
        )


def _materialized(context: dg.OpExecutionContext, settings, metadata: dict) -> None:
    """The live run's materialization of the worker's asset, for the run's day partition, with
    what the run did (the live job is an op job: this event is what the UI's partition status,
    the asset's history and its metadata plots read)."""
    context.log_event(dg.AssetMaterialization(
        asset_key=settings.asset,
        partition=context.partition_key if context.has_partition_key else None,
        metadata=metadata))


@dg.op(tags={"stage": "commit"},
       retry_policy=dg.RetryPolicy(max_retries=3, delay=1, backoff=dg.Backoff.EXPONENTIAL,
                                   jitter=dg.Jitter.FULL))
def publish_results_and_commit(
    context: dg.OpExecutionContext, batch: StageBatch, kafka: KafkaResource
) -> None:
    settings = batch.settings
    errors = pl.concat(batch.errors, how="diagonal_relaxed") if batch.errors else None
    error_count = errors.height if errors is not None else 0
    _accounted_for(batch, error_count)
    topic = batch.kafka_ranges[0].topic
    group = settings.consumer_group
    lanes = {r.partition % settings.lanes for r in batch.kafka_ranges}
    transaction = kafka.results_transaction(transactional_id(group, topic, lanes),
                                            client_id=f"{settings.name}-results")
    # Older runs of the lane are fenced now: where the group stands cannot change under us.
    progress = kafka.progress(group, topic)
    # Up to the range's end, or where the final stage held events back or the read stopped.
    commit_to = batch.commit_to()
    if context.retry_number and already_committed(batch.kafka_ranges, commit_to, progress):
        worker_logger(settings).info("%s: the group already stands at %s (this op's earlier "
                                     "attempt committed the range with its results)",
                                     batch.source, commit_to)
        _materialized(context, settings, {"kafka_range": batch.source, "already_committed": True})
        return None
    reason = group_moved(group, batch.kafka_ranges, progress)
    if reason is not None:
        _refuse(batch, reason)
    standing = {p.partition: -1 if p.committed is None else p.committed for p in progress}
    committed = {p: o for p, o in commit_to.items() if o > standing.get(p, -1)}
    try:
        transaction.begin()
        encoding = SUCCESS_ENCODINGS.get(settings.final_stage, success_messages)
        transaction.send(settings.success_topic, in_slices(batch.rows, encoding))
        transaction.flush()  # these records are in the log, invisible until the commit
        crash_point("mid_publish", settings.name)
        if errors is not None:
            transaction.send(settings.error_topic,
                             in_slices(errors, partial(error_record_messages,
                                                       max_payload_bytes=settings.error_payload_max_bytes),
                                       sized_by="original_payload"))
        crash_point("before_commit", settings.name)
        transaction.commit(group, topic, committed)
    except Fenced as fenced:
        _refuse(batch, f"{fenced}; nothing committed")
    except Exception:
        transaction.abort()  # nothing of it is ever visible; the op's retry publishes anew
        raise
    record_batch_metrics(settings, batch, worker_logger(settings))  # never raises
    lost = report_retention_loss(context, settings, batch.lost_to_retention, committed)
    summary = {
        "worker": settings.name,
        "kafka_range": batch.source,
        "records": batch.counts.get("read", 0),
        "succeeded": batch.rows.height,
        "failed": error_count,
        "committed_offsets": ", ".join(f"{p}:{o}" for p, o in commit_to.items()),
        "already_handled": batch.already_handled,
        "commit_moved": bool(committed),
        "missing_offsets": batch.missing_offsets,
        **lost,
        "duration_seconds": round(time.monotonic() - batch.started_at, 3),
        **_peak_memory(),
        **{k: v for k, v in batch.counts.items()
           if k != "read" and not k.startswith("failed_stage_")},
    }
    worker_logger(settings).info(
        "%s: %d records, %d succeeded, %d to %s; committed %s",
        summary["kafka_range"], summary["records"], summary["succeeded"], error_count,
        settings.error_topic, summary["committed_offsets"])
    failed_stages = sorted(k.removeprefix("failed_stage_") for k in batch.counts
                           if k.startswith("failed_stage_"))
    if failed_stages:
        # Records are on the error topic and offsets committed; the run still fails so the UI
        # and run-failure alerts show the outage.
        raise dg.Failure(
            f"{', '.join(failed_stages)} unavailable: {error_count} records of "
            f"{summary['kafka_range']} sent to {settings.error_topic}; offsets committed",
            metadata=summary,
            allow_retries=False,  # the records are out and committed: a retry would repeat them
        )
    _materialized(context, settings, summary)
    return None


# A plain output: it is the asset's output (its materialization's metadata), so a backfill run
# needs no IO manager for it.
@dg.op(tags={"stage": "finish_backfill"})
def finish_backfill(context: dg.OpExecutionContext, batch: StageBatch) -> None:
    """A backfill publishes nothing and commits nothing: the live runs published these records'
    outcomes and own the offsets. Its facts go to the materialization's metadata."""
    settings = batch.settings
    error_count = batch.error_count()
    _accounted_for(batch, error_count)
    summary = {
        "worker": settings.name,
        "mode": "backfill",
        "days": ", ".join(str(day) for day in sorted(batch.day_windows)),
        "kafka_windows": batch.source,
        "records": batch.counts.get("read", 0),
        "succeeded": batch.rows.height,
        "failed": error_count,
        "already_handled": batch.already_handled,
        "missing_offsets": batch.missing_offsets,
        "duration_seconds": round(time.monotonic() - batch.started_at, 3),
        **_peak_memory(),
        **{k: v for k, v in batch.counts.items() if k != "read"},
    }
    worker_logger(settings).info("backfill %s: %d records, %d succeeded, %d failed", batch.source,
                                 summary["records"], summary["succeeded"], error_count)
    not_sent = batch.counts.get("not_sent", 0)
    if not_sent:
        raise dg.Failure(f"backfill: {not_sent} events not sent (iTel circuit "
                         "breaker open); launch the backfill again when iTel is back",
                         metadata=summary, allow_retries=False)
    context.add_output_metadata(summary)
    return None
