"""Rows of the send ledger `itel_api_sends` (pure): one row per final send outcome of an event.

ledger_key makes writes idempotent: `<event_id>:accepted` exists at most once per event, so an
accepted event is never sent or recorded twice; rejections and dead letters are keyed by the run
that produced them, so a replay that fails again adds its own row.
"""

from __future__ import annotations

import polars as pl

from itel_dagster.stages.tracking_rows import with_partition_columns

LEDGER_COLUMNS = [
    "ledger_key", "event_id", "assignment_id", "project_id", "task_status", "request_payload",
    "idempotency_key", "outcome", "status_code", "attempts", "attempt_log", "latency_ms",
    "response_body", "itel_id", "sent_at", "kafka_topic", "kafka_partition", "kafka_offset",
    "year", "month", "day",
]
FINAL_OUTCOMES = ("accepted", "rejected", "dead_lettered")


def ledger_rows(sent: pl.DataFrame, run_id: str) -> pl.DataFrame:
    """`sent`: events joined with their SendOutcome columns; rows not sent are left out."""
    final = sent.filter(pl.col("outcome").is_in(FINAL_OUTCOMES))
    return with_partition_columns(final).select(
        pl.when(pl.col("outcome") == "accepted")
        .then(pl.format("{}:accepted", pl.col("event_id")))
        .otherwise(pl.format("{}:{}:{}", pl.col("event_id"), pl.col("outcome"), pl.lit(run_id)))
        .alias("ledger_key"),
        "event_id", "assignment_id", "project_id", "task_status", "request_payload",
        pl.col("event_id").alias("idempotency_key"),
        "outcome",
        pl.col("status_code").cast(pl.Int32),
        pl.col("attempts").cast(pl.Int32),
        pl.col("attempt_log").list.join("\n").alias("attempt_log"),
        pl.col("latency_ms").cast(pl.Float64),
        "response_body", "itel_id",
        pl.col("sent_at").cast(pl.Datetime("us", "UTC")),
        "kafka_topic", "kafka_partition", "kafka_offset", "year", "month", "day",
    )
