"""The ops of a dead-letter replay that the live workers do not have: read a worker's error topic,
route the rebuilt records to the worker's final stage, then publish and mark each error record.

Never commits a consumer group (the error topic is read by assignment) and never marks an error
record replayed before its outcome (Delta rows, or iTel sends and their ledger rows) is durable.
"""

from datetime import datetime, timezone

import dagster as dg
import polars as pl
from pydantic import Field

from itel_dagster.metrics.pipeline_metrics import record_batch_metrics
from itel_dagster.kafka.time_window import OffsetWindow, time_windows
from itel_dagster.ops.results_ops import success_messages
from itel_dagster.ops.shared_stage_ops import STAGE_IO
from itel_dagster.ops.stage_batch import StageBatch
from itel_dagster.resources.delta_tables import DeltaTablesResource
from itel_dagster.resources.kafka import KafkaResource
from itel_dagster.sensors.dispatch_plan import KafkaRange
from itel_dagster.settings.workers import (
    DELTA_WRITE,
    FINAL_STAGES,
    ITEL_API_SEND,
    KAFKA_PUBLISH,
    load_workers,
)
from itel_dagster.stages.dead_letters import (
    ORIGINAL,
    REPLAY_TABLE,
    error_days,
    parse_dead_letters,
    replay_batch,
    replay_log,
    replay_originals,
    select_for_replay,
    with_next_attempt,
)
from itel_dagster.stages.error_records import ERROR_RECORD_SCHEMA, error_record_messages
from itel_dagster.stages.tracking_rows import with_partition_columns
from itel_dagster.worker_logs import worker_logger


class ErrorTopicOffsets(dg.Config):
    partition: int = Field(description="A partition of the worker's error topic.")
    from_offset: int = Field(0, description="First offset of the error topic to read.")
    to_offset: int | None = Field(
        None, description="Offset to stop before (exclusive); empty: up to the end.")


class DeadLetterReplayConfig(dg.Config):
    """Which error records to replay. Without a window, every error record the topic still holds
    and that was not replayed yet."""

    worker: str = Field(
        description="The worker (its name in workers.yaml) whose error topic is replayed through "
        "its own stages.")
    from_time: str | None = Field(
        None, description="ISO 8601, UTC unless it has an offset (e.g. 2026-05-04T08:00:00Z): "
        "replay error records written at or after this time.")
    to_time: str | None = Field(
        None, description="ISO 8601: replay error records written before this time.")
    offsets: list[ErrorTopicOffsets] = Field(
        default_factory=list,
        description="Per-partition offset windows of the error topic; only these partitions are "
        "read. Combined with from_time/to_time, both must hold.")
    error_types: list[str] = Field(
        default_factory=list,
        description="Replay only these error_types (e.g. delta_unavailable, itel_rejected, "
        "itel_dead_lettered, missing_field); empty: all.")
    max_records: int = Field(
        10_000, ge=1, description="At most this many error records per run (the rest stay for "
        "the next replay).")


def _epoch_ms(text: str | None, name: str) -> int | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise dg.Failure(f"{name} {text!r} is not an ISO 8601 time (e.g. 2026-05-04T08:00:00Z)",
                         allow_retries=False) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def _windows(config: DeadLetterReplayConfig, kafka: KafkaResource, topic: str) -> list[OffsetWindow]:
    from_ms, to_ms = _epoch_ms(config.from_time, "from_time"), _epoch_ms(config.to_time, "to_time")
    if from_ms is not None and to_ms is not None and from_ms >= to_ms:
        raise dg.Failure(f"from_time {config.from_time} is not before to_time {config.to_time}",
                         allow_retries=False)
    windows = time_windows(kafka.servers(), topic, from_ms, to_ms)
    if not config.offsets:
        return windows
    by_partition = {w.partition: w for w in windows}
    unknown = sorted({o.partition for o in config.offsets} - set(by_partition))
    if unknown:
        raise dg.Failure(f"{topic} has no partition {unknown}; it has {sorted(by_partition)}",
                         allow_retries=False)
    return [by_partition[o.partition].clipped(o.from_offset, o.to_offset) for o in config.offsets]


@dg.op(
    out={"batch": dg.Out(io_manager_key=STAGE_IO), "dead_letters": dg.Out(io_manager_key=STAGE_IO)},
    retry_policy=dg.RetryPolicy(max_retries=2, delay=1, backoff=dg.Backoff.EXPONENTIAL,
                                jitter=dg.Jitter.FULL),
    tags={"stage": "read"},
)
def read_dead_letters(
    context: dg.OpExecutionContext, config: DeadLetterReplayConfig, kafka: KafkaResource,
    delta: DeltaTablesResource,
):
    """The original records of the chosen error records, as a replay batch, and the chosen error
    records themselves (dead_letters), which the last op marks."""
    workers = load_workers()
    if config.worker not in workers:
        raise dg.Failure(f"unknown worker {config.worker!r}; workers.yaml has {sorted(workers)}",
                         allow_retries=False)
    settings = workers[config.worker]
    if settings.final_stage == KAFKA_PUBLISH:
        # Its error records are upstream records it could not read: the sink stages would only
        # publish them, unshaped, to its success topic (the workers' input).
        raise dg.Failure(f"{config.worker} ({KAFKA_PUBLISH}) has no replay: its error records "
                         "are upstream records it could not read; fix them at the source and "
                         "publish them upstream again", allow_retries=False)
    topic = settings.error_topic
    windows = _windows(config, kafka, topic)
    records = []
    for window in windows:
        records.extend(kafka.read_range(topic, window.partition, window.start, window.end).records)
    dead_letters = parse_dead_letters(records)
    readable = dead_letters.filter(pl.col("unreadable").is_null())
    replayed = delta.values_present(
        REPLAY_TABLE, "error_record", readable["error_record"].to_list(), error_days(readable),
        where=pl.col("outcome") == "replayed")
    selected = select_for_replay(dead_letters, config.error_types, replayed, config.max_records)
    originals = replay_originals(selected)
    log = worker_logger(settings)
    unreadable = dead_letters.height - readable.height
    if unreadable:
        log.warning("replay of %s: %d error records cannot be replayed: %s", topic, unreadable,
                    dead_letters.filter(pl.col("unreadable").is_not_null())["unreadable"][0])
    log.info("replay of %s: %d error records read, %d already replayed, %d selected, %d original "
             "records to replay", topic, dead_letters.height, len(replayed), selected.height,
             originals.height)
    kinds = dict(selected.group_by("error_type").len().sort("error_type").rows())
    context.add_output_metadata({
        "error_topic": topic,
        "windows": ", ".join(f"{w.partition}:{w.start}-{w.end}" for w in windows),
        "error_records_read": dead_letters.height,
        "unreadable": unreadable,
        "already_replayed": len(replayed),
        "selected": selected.height,
        "original_records": originals.height,
        **{f"selected_{kind}": n for kind, n in kinds.items()},
    }, output_name="batch")
    batch = StageBatch(
        worker=settings.name,
        kafka_ranges=(KafkaRange(topic, -1, 0, originals.height),),
        rows=replay_batch(originals),
        counts={"read": originals.height, "error_records_selected": selected.height},
        mode="replay",
        described_as=f"dead letters of {settings.name} replayed from {topic}",
    )
    yield dg.Output(batch, "batch")
    yield dg.Output(selected, "dead_letters")


@dg.op(
    out={stage: dg.Out(io_manager_key=STAGE_IO, is_required=False) for stage in FINAL_STAGES},
    tags={"stage": "route"},
)
def route_to_final_stage(batch: StageBatch):
    """The batch goes on to its worker's final stage (workers.yaml `stages`): one branch runs."""
    yield dg.Output(batch, batch.settings.final_stage)


def _accepted_before(delta: DeltaTablesResource, batch: StageBatch,
                     rest: pl.DataFrame) -> pl.DataFrame:
    """Of the originals with no outcome in this run, those iTel accepted earlier (skipped by
    skip_already_sent); the others were held back by the circuit breaker."""
    ids = rest["event_id"].drop_nulls().to_list()
    days = with_partition_columns(rest).select("year", "month", "day").unique().rows()
    accepted = delta.values_present(batch.settings.table, "event_id", ids, days,
                                    where=pl.col("outcome") == "accepted")
    return rest.filter(pl.col("event_id").is_in(list(accepted)))


def _materializations(batch: StageBatch, succeeded: pl.DataFrame, run_id: str):
    """What the replay changed, per day partition of the asset it touched."""
    asset = batch.settings.asset
    if batch.settings.final_stage == DELTA_WRITE:
        if succeeded.is_empty():  # the write op passes an empty batch through untouched
            return
        counts = succeeded.group_by(pl.col("day_partition").alias("partition")).agg(
            pl.len().alias("rows_replayed"))
    else:
        if batch.ledger is None or batch.ledger.is_empty():
            return
        counts = batch.ledger.group_by(
            pl.date("year", "month", "day").cast(pl.String).alias("partition")
        ).agg((pl.col("outcome") == outcome).sum().alias(f"replayed_{outcome}")
              for outcome in ("accepted", "rejected", "dead_lettered"))
    for row in counts.sort("partition").rows(named=True):
        yield dg.AssetMaterialization(
            asset_key=asset, partition=row.pop("partition"),
            description=f"dead-letter replay of {batch.settings.error_topic}",
            metadata={**row, "replay_run_id": run_id, "source": "dead_letter_replay"})


# No RetryPolicy: a retry after the publish would publish the new error records twice. A failed
# run is re-launched by hand; the stages make a second replay of the same records harmless.
@dg.op(tags={"stage": "replay_results"})
def finish_replay(
    context: dg.OpExecutionContext, batch: StageBatch, dead_letters: pl.DataFrame,
    kafka: KafkaResource, delta: DeltaTablesResource,
) -> dict:
    """After the final stage: publish successes (with replayed_from) and new error records (the
    next attempt), flush, then record each error record's outcome in the replay log."""
    settings = batch.settings
    replayed_from = replay_originals(dead_letters)
    errors = (pl.concat(batch.errors, how="diagonal_relaxed") if batch.errors
              else pl.DataFrame(schema=ERROR_RECORD_SCHEMA))
    errors = with_next_attempt(errors, replayed_from)
    succeeded = batch.rows.join(replayed_from.select(*ORIGINAL, "replayed_from"), on=ORIGINAL,
                                how="left")
    outcome_known = pl.concat([succeeded.select(ORIGINAL), errors.select(ORIGINAL)])
    rest = replayed_from.join(outcome_known, on=ORIGINAL, how="anti")
    done_before = (_accepted_before(delta, batch, rest)
                   if batch.settings.final_stage == ITEL_API_SEND else rest.clear())
    not_sent = batch.counts.get("not_sent", 0)
    handled = succeeded.height + errors.height + batch.already_handled + not_sent
    if handled != batch.counts.get("read", 0) or done_before.height != batch.already_handled:
        raise dg.Failure(
            f"{batch.counts.get('read', 0)} records replayed but {succeeded.height} succeeded, "
            f"{errors.height} failed, {batch.already_handled} were already handled "
            f"({done_before.height} found in the ledger) and {not_sent} were not sent; "
            "nothing marked", allow_retries=False)

    producer = kafka.results_producer(client_id=f"{settings.name}-replay")
    producer.send(settings.success_topic, success_messages(succeeded))
    producer.send(settings.error_topic, error_record_messages(
        errors, max_payload_bytes=settings.error_payload_max_bytes))
    producer.flush()
    # Rows and sends of a replay count like a live run's (delta_writes_total = rows in Delta).
    record_batch_metrics(settings, batch, worker_logger(settings))  # never raises

    log_rows = replay_log(dead_letters, pl.concat([succeeded.select(ORIGINAL),
                                                done_before.select(ORIGINAL)]),
                          errors, context.run_id, datetime.now(timezone.utc))
    try:
        delta.writer(REPLAY_TABLE, key="replay_key").merge_new_rows(log_rows)
    except Exception as exc:  # noqa: BLE001 - reported, and the records stay unmarked
        raise dg.Failure(
            f"outcomes of {batch.counts.get('read', 0)} replayed records are durable and "
            f"published, but {REPLAY_TABLE} could not record them ({type(exc).__name__}: {exc}); "
            "a later replay takes them again without duplicate rows or sends",
            allow_retries=False) from exc
    for materialization in _materializations(batch, succeeded, context.run_id):
        context.log_event(materialization)

    outcomes = dict(log_rows.group_by("outcome").len().rows())
    summary = {
        "worker": settings.name,
        "error_topic": settings.error_topic,
        "error_records_selected": dead_letters.height,
        "original_records": batch.counts.get("read", 0),
        "succeeded": succeeded.height,
        "already_handled": batch.already_handled,
        "failed_again": errors.height,
        "not_sent": not_sent,
        "error_records_replayed": outcomes.get("replayed", 0),
        "error_records_failed_again": outcomes.get("failed_again", 0),
        "replay_table": delta.table_uri(REPLAY_TABLE),
        **{k: v for k, v in batch.counts.items()
           if k not in ("read", "not_sent") and not k.startswith("failed_stage_")},
    }
    worker_logger(settings).info(
        "replay of %s: %d records, %d succeeded, %d already handled, %d failed again (to %s), "
        "%d not sent", settings.error_topic, summary["original_records"], succeeded.height,
        batch.already_handled, errors.height, settings.error_topic, not_sent)
    failed_stages = sorted(k.removeprefix("failed_stage_") for k in batch.counts
                           if k.startswith("failed_stage_"))
    if failed_stages:
        raise dg.Failure(
            f"{', '.join(failed_stages)} still unavailable: {errors.height} replayed records "
            f"failed again and are back on {settings.error_topic} with the next attempt",
            metadata=summary, allow_retries=False)
    context.add_output_metadata(summary)
    return summary
