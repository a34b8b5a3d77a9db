"""The API worker's final stages: skip what the send ledger already holds, send to iTel, record
every final outcome in the ledger.

An event is sent at most once per final outcome: the ledger is read before sending, and iTel's
Idempotency-Key (the event_id) covers a crash between a send and its ledger row. Events the open
circuit breaker held back are not failures: they stay in Kafka (commit stops before them).
"""

from dataclasses import replace

import dagster as dg
import polars as pl

from itel_dagster.ops.shared_stage_ops import STAGE_IO
from itel_dagster.ops.stage_batch import StageBatch
from itel_dagster.resources.delta_tables import DeltaTablesResource, window_days
from itel_dagster.resources.itel_api import ItelApiResource
from itel_dagster.stages.error_records import stage_failures
from itel_dagster.stages.itel_payload import with_payloads
from itel_dagster.stages.send_ledger import ledger_rows
from itel_dagster.stages.tracking_rows import with_partition_columns
from itel_dagster.worker_logs import worker_logger

LEDGER_TABLE = "itel_api_sends"
OUTCOME_SCHEMA = {
    "event_id": pl.String, "outcome": pl.String, "status_code": pl.Int32, "attempts": pl.Int32,
    "attempt_log": pl.List(pl.String), "latency_ms": pl.Float64, "response_body": pl.String,
    "itel_id": pl.String, "sent_at": pl.Datetime("us", "UTC"),
}


def _days(rows: pl.DataFrame) -> list[tuple[int, int, int]]:
    return with_partition_columns(rows).select("year", "month", "day").unique().rows()


@dg.op(out=dg.Out(io_manager_key=STAGE_IO), tags={"stage": "ledger_check"})
def skip_already_sent(
    context: dg.OpExecutionContext, batch: StageBatch, delta: DeltaTablesResource
) -> StageBatch:
    """Events with a final outcome in the ledger were handled by an earlier run: not again.
    An event read twice in this run (a producer retry) is sent once, from its first copy.

    A backfill (reconciliation) or a dead-letter replay skips only events iTel accepted: rejected
    and dead-lettered ones are sent again."""
    if batch.rows.is_empty():
        return batch
    deduplicated = batch.without_duplicate_deliveries()
    duplicates = deduplicated.already_handled - batch.already_handled
    if duplicates:
        worker_logger(batch.settings).info(
            "%s: %d duplicate deliveries of events read earlier in this run, not sent again",
            batch.source, duplicates)
        context.add_output_metadata({"duplicates_in_run": duplicates})
    batch = deduplicated
    only_accepted = None if batch.mode == "live" else pl.col("outcome") == "accepted"
    # The records' days and dedupe_days before: a copy redelivered across midnight is found.
    days = window_days(_days(batch.rows), batch.settings.dedupe_days)
    handled = delta.values_present(LEDGER_TABLE, "event_id", batch.rows["event_id"].to_list(),
                                   days, where=only_accepted)
    if not handled:
        return batch
    remaining = batch.rows.filter(~pl.col("event_id").is_in(list(handled)))
    skipped = batch.rows.height - remaining.height
    worker_logger(batch.settings).info(
        "%s: %d events already in the send ledger, not sent again", batch.source, skipped)
    context.add_output_metadata({"already_in_ledger": skipped})
    return replace(batch.next(remaining), already_handled=batch.already_handled + skipped)


def _outcome_frame(report) -> pl.DataFrame:
    return pl.DataFrame(
        [{
            "event_id": o.event_id, "outcome": o.outcome, "status_code": o.status_code,
            "attempts": o.attempts, "attempt_log": list(o.attempt_log),
            "latency_ms": o.latency_ms, "response_body": o.response_body,
            "itel_id": o.itel_id, "sent_at": o.sent_at,
        } for o in report.outcomes],
        schema=OUTCOME_SCHEMA,
    )


@dg.op(out=dg.Out(io_manager_key=STAGE_IO), tags={"stage": "itel_api_send"})
def send_to_itel(
    context: dg.OpExecutionContext, batch: StageBatch, itel: ItelApiResource
) -> StageBatch:
    settings = batch.settings
    log = worker_logger(settings)
    if batch.rows.is_empty():
        return batch
    rows = with_payloads(batch.rows, itel.payload_template())
    report = itel.send_rows(rows)
    sent = rows.join(_outcome_frame(report), on="event_id", how="left")
    by_outcome = dict(sent.group_by("outcome").len().rows())
    accepted = sent.filter(pl.col("outcome") == "accepted")
    failed = sent.filter(pl.col("outcome").is_in(["rejected", "dead_lettered"]))
    held_back = sent.filter(pl.col("outcome") == "not_sent")
    failures = stage_failures(
        failed, worker=settings.name, stage="itel_api_send",
        error_type=pl.format("itel_{}", pl.col("outcome")),
        reason=pl.format("HTTP {} after {} attempt(s): {} | {}",
                         pl.col("status_code").cast(pl.String).fill_null("none"),
                         pl.col("attempts"), pl.col("attempt_log").list.join("; "),
                         pl.col("response_body").fill_null("")),
    )
    if failed.height:
        log.warning("%s: %d events rejected or dead-lettered by iTel, to %s",
                    batch.source, failed.height, settings.error_topic)
    commit_before = None
    if held_back.height:
        # Per partition: the first event held back, and every later one, stay in Kafka.
        commit_before = dict(held_back.group_by("kafka_partition")
                             .agg(pl.col("kafka_offset").min()).rows())
        log.warning("%s: %s; %d events stay in Kafka from offsets %s", batch.source,
                    report.warning or f"circuit breaker {report.breaker_state}", held_back.height,
                    ", ".join(f"{p}:{o}" for p, o in sorted(commit_before.items())))
    metadata = {
        "sent": accepted.height + failed.height, "accepted": by_outcome.get("accepted", 0),
        "rejected": by_outcome.get("rejected", 0),
        "dead_lettered": by_outcome.get("dead_lettered", 0),
        "not_sent": held_back.height, "retried": report.retried,
        "requests_made": report.requests_made, "breaker_state": report.breaker_state,
        "latency_p50_ms": report.latency_p50_ms, "latency_p95_ms": report.latency_p95_ms,
    }
    context.add_output_metadata({k: v for k, v in metadata.items() if v is not None})
    success = accepted.select(
        "event_id", "assignment_id", "status_code", "itel_id", "latency_ms",
        "kafka_topic", "kafka_partition", "kafka_offset",
    )
    # Carried to the run's materialization metadata by the last op.
    facts = {k: v for k, v in metadata.items() if v is not None}
    return replace(batch.next(success, failures, **facts), commit_before=commit_before,
                   ledger=ledger_rows(sent, context.run_id))


@dg.op(out=dg.Out(io_manager_key=STAGE_IO), tags={"stage": "send_ledger"},
       retry_policy=dg.RetryPolicy(max_retries=3, delay=1, backoff=dg.Backoff.EXPONENTIAL,
                                   jitter=dg.Jitter.PLUS_MINUS))
def write_send_ledger(
    context: dg.OpExecutionContext, batch: StageBatch, delta: DeltaTablesResource
) -> StageBatch:
    """Record the outcomes before the commit: a crash here re-sends, and iTel's Idempotency-Key
    answers the repeat with the same itel_id."""
    if batch.ledger is None or batch.ledger.is_empty():
        return batch
    writer = delta.writer(LEDGER_TABLE, key="ledger_key", dedupe_days=batch.settings.dedupe_days)
    result = writer.merge_new_rows(batch.ledger)
    context.add_output_metadata({"ledger_rows_inserted": result.inserted,
                                 "ledger_version": result.version})
    return batch
