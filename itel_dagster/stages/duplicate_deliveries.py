"""Duplicate deliveries within one batch (pure): the same event_id read twice, as a producer
retry or a redelivery publishes it. The first copy (lowest partition, then offset) is the event;
the later copies are not processed again. Never reorders the rows it keeps.
"""

from __future__ import annotations

import polars as pl


def first_copies(events: pl.DataFrame) -> pl.DataFrame:
    """`events` with each event_id once: its copy of the lowest (kafka_partition, kafka_offset)."""
    if events.is_empty():
        return events
    return (
        events.with_row_index("_row")
        .sort("kafka_partition", "kafka_offset")
        .filter(pl.col("event_id").is_first_distinct())
        .sort("_row")
        .drop("_row")
    )
