"""The API worker's final stages: skip what the send ledger already holds, send to iTel in
rounds, and record each round's final outcomes in the ledger before the next round goes out.

A crash re-sends at most one round (iTel's Idempotency-Key, the event_id, answers that repeat).
A record of the run's range whose send the ledger already holds was never committed: its success
or error record is published from the ledger, once, by the run that commits it. Events the open
circuit breaker held back are not failures: they stay in Kafka (commit stops before them).
"""

import math
from collections.abc import Callable
from dataclasses import replace

import dagster as dg
import polars as pl

from itel_dagster.crash_points import crash_point
from itel_dagster.ops.shared_stage_ops import STAGE_IO
from itel_dagster.ops.stage_batch import StageBatch
from itel_dagster.resources.delta_tables import (
    DeltaTablesResource,
    DeltaTableWriter,
    dedupe_since,
    window_days,
)
from itel_dagster.resources.itel_api import ItelApiResource
from itel_dagster.stages.error_records import stage_failures
from itel_dagster.stages.itel_payload import with_payloads
from itel_dagster.stages.send_ledger import (
    FINAL_OUTCOMES,
    OUTCOME_COLUMNS,
    RECORD_COLUMNS,
    ledger_rows,
    recorded_outcomes,
    send_rounds,
)
from itel_dagster.stages.tracking_rows import with_partition_columns
from itel_dagster.worker_logs import worker_logger

OUTCOME_SCHEMA = {
    "event_id": pl.String, "outcome": pl.String, "status_code": pl.Int32, "attempts": pl.Int32,
    "attempt_log": pl.List(pl.String), "latency_ms": pl.Float64, "response_body": pl.String,
    "itel_id": pl.String, "sent_at": pl.Datetime("us", "UTC"),
}
# A row's outcome from an earlier run's ledger row (a struct of OUTCOME_COLUMNS), set by
# skip_already_sent on records sent but never committed: published, not sent again.
RECORDED = "ledger_outcome"


def _days(rows: pl.DataFrame) -> list[tuple[int, int, int]]:
    return with_partition_columns(rows).select("year", "month", "day").unique().rows()


def _deduplicated(context: dg.OpExecutionContext, batch: StageBatch) -> StageBatch:
    """An event read twice in this run (a producer retry) is sent once, from its first copy."""
    deduplicated = batch.without_duplicate_deliveries()
    duplicates = deduplicated.already_handled - batch.already_handled
    if duplicates:
        worker_logger(batch.settings).info(
            "%s: %d duplicate deliveries of events read earlier in this run, not sent again",
            batch.source, duplicates)
        context.add_output_metadata({"duplicates_in_run": duplicates})
    return deduplicated


def _ledger_window(batch: StageBatch) -> tuple[list, object, list[str]]:
    """(days, since, event_ids) of the ledger lookup: the records' days and dedupe_days before (a
    copy redelivered across midnight is found), and only ledger rows written within the dedupe
    window (the lookup skips the day's older files)."""
    days = window_days(_days(batch.rows), batch.settings.dedupe_days)
    since = dedupe_since(batch.rows["kafka_timestamp"], batch.settings.dedupe_window_hours)
    return days, since, batch.rows["event_id"].to_list()


def _without_handled(context: dg.OpExecutionContext, batch: StageBatch, handled: set,
                     recorded: pl.DataFrame | None = None) -> StageBatch:
    """The batch less the events in `handled`, except those whose recorded outcome is published
    from the ledger (`recorded`, a live run's own records)."""
    if not handled:
        return batch
    rows = batch.rows
    again = ~pl.col("event_id").is_in(list(handled))
    if recorded is not None and recorded.height:
        rows = rows.join(recorded.select("event_id", pl.struct(OUTCOME_COLUMNS).alias(RECORDED)),
                         on="event_id", how="left")
        again = again | pl.col(RECORDED).is_not_null()
        worker_logger(batch.settings).info(
            "%s: %d events sent by a run that never committed them: their results are published "
            "from the send ledger, not sent again", batch.source, recorded.height)
    remaining = rows.filter(again)
    skipped = batch.rows.height - remaining.height
    if skipped:
        worker_logger(batch.settings).info(
            "%s: %d events already in the send ledger, not sent again", batch.source, skipped)
        context.add_output_metadata({"already_in_ledger": skipped})
    return replace(batch.next(remaining), already_handled=batch.already_handled + skipped)


@dg.op(out=dg.Out(io_manager_key=STAGE_IO), tags={"stage": "ledger_check"})
def skip_already_sent(
    context: dg.OpExecutionContext, batch: StageBatch, delta: DeltaTablesResource
) -> StageBatch:
    """The live job's ledger check: events with a final outcome in the ledger were handled by an
    earlier run, not again."""
    if batch.rows.is_empty():
        return batch
    batch = _deduplicated(context, batch)
    days, since, ids = _ledger_window(batch)
    ledger = delta.rows_present(batch.settings.table, "event_id", ids, days,
                                ["event_id", *OUTCOME_COLUMNS, *RECORD_COLUMNS], since=since)
    if ledger is None:
        return batch
    # A live run's range starts at the group's committed offset: a ledger row of one of its
    # own records was written by a run that died before publishing and committing.
    return _without_handled(context, batch, set(ledger["event_id"].to_list()),
                            recorded_outcomes(batch.rows, ledger))


@dg.op(out=dg.Out(io_manager_key=STAGE_IO), tags={"stage": "ledger_check"})
def skip_already_accepted(
    context: dg.OpExecutionContext, batch: StageBatch, delta: DeltaTablesResource
) -> StageBatch:
    """The ledger check of a backfill (a reconciliation) or a dead-letter replay: skips only events
    iTel accepted; rejected and dead-lettered ones are sent again."""
    if batch.rows.is_empty():
        return batch
    batch = _deduplicated(context, batch)
    days, since, ids = _ledger_window(batch)
    return _without_handled(context, batch, delta.values_present(
        batch.settings.table, "event_id", ids, days, where=pl.col("outcome") == "accepted",
        since=since))


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


def record_round(writer: DeltaTableWriter, ledger: pl.DataFrame, since=None):
    """One round's final outcomes into the ledger (one MERGE per day, idempotent by ledger_key),
    before the next round is sent."""
    return writer.merge_new_rows(ledger, since=since)


def _nearest_rank(values: pl.Series, fraction: float) -> float | None:
    if values.is_empty():
        return None
    return round(values.sort()[max(0, math.ceil(fraction * values.len()) - 1)], 3)


def _split_recorded(rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """(rows to send, rows whose outcome an earlier run recorded, with its outcome columns)."""
    if RECORDED not in rows.columns:
        return rows, None
    recorded = rows.filter(pl.col(RECORDED).is_not_null())
    recorded = recorded.drop(RECORDED).join(recorded.select("event_id", pl.col(RECORDED))
                                            .unnest(RECORDED), on="event_id")
    return rows.filter(pl.col(RECORDED).is_null()).drop(RECORDED), recorded


def _before_commit_point(commit_before: dict[int, int]) -> pl.Expr:
    """A live run: a finished event past the commit point is published by the run that commits it
    (from the ledger), so its success or error record is published once."""
    limit = pl.col("kafka_partition").replace_strict(commit_before, default=None)
    return ~(pl.col("kafka_offset") >= limit).fill_null(False)


def _everything(commit_before: dict[int, int]) -> pl.Expr:
    """A backfill or a replay commits nothing: every finished event is reported by this run."""
    return pl.lit(True)


@dg.op(out=dg.Out(io_manager_key=STAGE_IO), tags={"stage": "itel_api_send"})
def send_to_itel(
    context: dg.OpExecutionContext, batch: StageBatch, itel: ItelApiResource,
    delta: DeltaTablesResource,
) -> StageBatch:
    """The live job's send (see _send): what finished past the commit point is left to the run
    that commits it."""
    return _send(context, batch, itel, delta, _before_commit_point)


@dg.op(out=dg.Out(io_manager_key=STAGE_IO), tags={"stage": "itel_api_send"})
def resend_to_itel(
    context: dg.OpExecutionContext, batch: StageBatch, itel: ItelApiResource,
    delta: DeltaTablesResource,
) -> StageBatch:
    """The send of a backfill or a dead-letter replay (see _send): nothing is committed, so every
    finished event is reported by this run."""
    return _send(context, batch, itel, delta, _everything)


def _send(context: dg.OpExecutionContext, batch: StageBatch, itel: ItelApiResource,
          delta: DeltaTablesResource, reported: Callable[[dict[int, int]], pl.Expr]) -> StageBatch:
    """Sends round after round (ItelApiResource.round_size() events each) and MERGEs each round's
    final outcomes into the ledger before the next; once the breaker holds a round's events back,
    no later round is sent. A crash here re-sends at most the round in flight. Where the breaker
    held events back, `reported(commit_before)` says which finished events this run reports."""
    settings = batch.settings
    log = worker_logger(settings)
    if batch.rows.is_empty():
        return batch
    to_send, recorded = _split_recorded(batch.rows)
    rows = send_rounds(with_payloads(to_send, itel.payload_template()), itel.round_size())
    writer = delta.writer(settings.table, key="ledger_key", dedupe_days=settings.dedupe_days)
    reports, outcomes, ledgers, inserted = [], [], [], 0
    for _, round_rows in rows.group_by("send_round", maintain_order=True):
        if reports and reports[-1].skipped_by_breaker:
            break  # the breaker stopped sending: later rounds stay in Kafka
        report = itel.send_rows(round_rows)
        crash_point("after_post_round", settings.name)
        outcome = _outcome_frame(report)
        ledger = ledger_rows(round_rows.join(outcome, on="event_id", how="left"), context.run_id)
        if ledger.height:
            since = dedupe_since(round_rows["kafka_timestamp"], settings.dedupe_window_hours)
            inserted += record_round(writer, ledger, since).inserted
        reports.append(report)
        outcomes.append(outcome)
        ledgers.append(ledger)
    sent = rows.drop("send_round").join(
        pl.concat(outcomes) if outcomes else pl.DataFrame(schema=OUTCOME_SCHEMA),
        on="event_id", how="left",
    ).with_columns(pl.col("outcome").fill_null("not_sent"))
    this_run = sent.filter(pl.col("outcome").is_in(FINAL_OUTCOMES))
    if recorded is not None:
        sent = pl.concat([sent, recorded], how="diagonal_relaxed")
    by_outcome = dict(this_run.group_by("outcome").len().rows())
    held_back = sent.filter(pl.col("outcome") == "not_sent")
    commit_before = None
    finished = pl.col("outcome").is_in(FINAL_OUTCOMES)
    if held_back.height:
        # Per partition: the first event held back, and every later one, stay in Kafka.
        commit_before = dict(held_back.group_by("kafka_partition")
                             .agg(pl.col("kafka_offset").min()).rows())
        stopped = next((r for r in reports if r.skipped_by_breaker), None)
        log.warning("%s: %s; %d events stay in Kafka from offsets %s", batch.source,
                    (stopped.warning if stopped and stopped.warning else None)
                    or f"circuit breaker {reports[-1].breaker_state if reports else 'open'}",
                    held_back.height,
                    ", ".join(f"{p}:{o}" for p, o in sorted(commit_before.items())))
        finished = finished & reported(commit_before)
    awaiting_commit = sent.filter(pl.col("outcome").is_in(FINAL_OUTCOMES)).height \
        - sent.filter(finished).height
    accepted = sent.filter(finished & (pl.col("outcome") == "accepted"))
    failed = sent.filter(finished & pl.col("outcome").is_in(["rejected", "dead_lettered"]))
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
    latencies = this_run["latency_ms"]
    metadata = {
        "sent": this_run.height, "accepted": by_outcome.get("accepted", 0),
        "rejected": by_outcome.get("rejected", 0),
        "dead_lettered": by_outcome.get("dead_lettered", 0),
        "not_sent": held_back.height, "retried": sum(r.retried for r in reports),
        "requests_made": sum(r.requests_made for r in reports),
        "breaker_state": reports[-1].breaker_state if reports else None,
        "latency_p50_ms": _nearest_rank(latencies, 0.50),
        "latency_p95_ms": _nearest_rank(latencies, 0.95),
        "send_rounds": len(reports), "ledger_rows_inserted": inserted,
        "recovered_from_ledger": 0 if recorded is None else recorded.height,
        # Counted as held in Kafka by the commit check: their records go out with the commit.
        "awaiting_commit": awaiting_commit,
    }
    context.add_output_metadata({k: v for k, v in metadata.items() if v is not None})
    success = accepted.select(
        "event_id", "assignment_id", "status_code", "itel_id", "latency_ms",
        "kafka_topic", "kafka_partition", "kafka_offset",
    )
    # Carried to the run's materialization metadata by the last op.
    facts = {k: v for k, v in metadata.items() if v is not None}
    return replace(batch.next(success, failures, **facts), commit_before=commit_before,
                   ledger=pl.concat(ledgers) if ledgers else None)
