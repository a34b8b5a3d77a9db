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
# What a ledger row tells of its send, as the sender's outcome columns name it.
OUTCOME_COLUMNS = ["outcome", "status_code", "attempts", "attempt_log", "latency_ms",
                   "response_body", "itel_id", "sent_at"]
RECORD_COLUMNS = ["kafka_topic", "kafka_partition", "kafka_offset"]


def send_rounds(rows: pl.DataFrame, round_size: int) -> pl.DataFrame:
    """`rows` with `send_round` (0, 1, ...), at most round_size rows a round, the rows sorted by
    it. Round r holds each assignment's r-th event (in Kafka order) before any later one, so an
    assignment's events never go before its earlier ones, and a round spreads over as many
    assignments (the sender's parallel lanes) as it can."""
    in_assignment = pl.col("kafka_offset").rank("ordinal").over("assignment_id")
    return (
        rows.with_columns(in_assignment.alias("_nth"))
        .sort("_nth", "kafka_offset")
        .with_columns((pl.int_range(pl.len()) // round_size).alias("send_round"))
        .drop("_nth")
    )


def recorded_outcomes(rows: pl.DataFrame, ledger: pl.DataFrame) -> pl.DataFrame:
    """The outcome the ledger holds for each of `rows` sent from this very Kafka record (same
    topic, partition and offset): event_id plus OUTCOME_COLUMNS, accepted first, else the latest.
    `ledger`: ledger rows with event_id, OUTCOME_COLUMNS and RECORD_COLUMNS."""
    records = rows.select("event_id", *RECORD_COLUMNS)
    return (
        ledger.with_columns(pl.col(c).cast(records.schema[c]) for c in RECORD_COLUMNS)
        .join(records, on=["event_id", *RECORD_COLUMNS], how="semi")
        .sort(pl.col("outcome") == "accepted", "sent_at", descending=True, nulls_last=True)
        .unique("event_id", keep="first", maintain_order=True)
        .select("event_id", *OUTCOME_COLUMNS)
        .with_columns(pl.col("attempt_log").str.split("\n"))
    )


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
