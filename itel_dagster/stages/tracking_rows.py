"""Rows of the Delta table itel_cabinet_task_tracking from enriched events (pure).

year/month/day are the UTC day of the Kafka record timestamp, the same day the run's Dagster
partition and a backfill use. Duplicate event_ids within a batch keep the earliest record.
"""

from __future__ import annotations

import polars as pl

PARTITION_COLUMNS = ["year", "month", "day"]
REQUIRED_COLUMNS = {"event_id", *PARTITION_COLUMNS}


def with_partition_columns(events: pl.DataFrame) -> pl.DataFrame:
    day = pl.col("kafka_timestamp").dt.convert_time_zone("UTC")
    return events.with_columns(
        day.dt.year().cast(pl.Int32).alias("year"),
        day.dt.month().cast(pl.Int32).alias("month"),
        day.dt.day().cast(pl.Int32).alias("day"),
    )


def check_column_mapping(column_mapping: dict[str, str]) -> None:
    missing = REQUIRED_COLUMNS - set(column_mapping)
    if missing:
        raise ValueError(
            f"column_mapping must keep the columns {sorted(missing)}: exactly-once and the "
            "day partitions depend on them"
        )


def tracking_rows(enriched: pl.DataFrame, column_mapping: dict[str, str]) -> pl.DataFrame:
    """Delta column <- pipeline field, one row per event_id (the earliest Kafka record wins)."""
    check_column_mapping(column_mapping)
    rows = (
        with_partition_columns(enriched)
        .sort("kafka_timestamp", "kafka_partition", "kafka_offset")
        .unique(subset="event_id", keep="first", maintain_order=True)
    )
    return rows.select([pl.col(field).alias(column) for column, field in column_mapping.items()])
