"""What the asset checks compare, read from Kafka and Delta: a day's input records, the group's
progress, the error topic's original coordinates, a table's rows of a day, its newest ingested_at.

Reads only: it never joins or commits a consumer group and never writes a table. Callers read the
group's progress first, then Kafka, then the tables (see `next_offsets`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

import dagster as dg
import polars as pl
from deltalake import DeltaTable

from itel_dagster.kafka.day_window import day_bounds_ms
from itel_dagster.kafka.time_window import time_windows
from itel_dagster.resources.delta_tables import DeltaTablesResource
from itel_dagster.resources.kafka import KafkaResource
from itel_dagster.settings.paths import delta_storage_options
from itel_dagster.stages.day_audit import DAY_RECORD_SCHEMA, day_records
from itel_dagster.stages.dead_letters import parse_dead_letters
from itel_dagster.stages.raw_batch import raw_batch_from_records

# Kafka refuses records stamped more than an hour ahead (log.message.timestamp.after.max.ms), so
# an error record about a day's input was written at the earliest an hour before the day began.
FUTURE_STAMP_MARGIN_MS = 3_600_000


# Offsets per read: memory holds one chunk's payloads, then only coordinates and event_ids.
READ_CHUNK = 50_000


@dataclass
class KafkaDay:
    records: pl.DataFrame  # day_audit.day_records of the day's input records
    held: dict[int, tuple[int, int]] = field(default_factory=dict)  # partition -> (low, high)


def next_offsets(kafka: KafkaResource, group: str, topic: str) -> dict[int, int]:
    """partition -> the offset the group resumes from. Read it before the records and tables: a
    record below it was handled, its row or error record durable before the commit."""
    return {p.partition: p.next_offset for p in kafka.progress(group, topic)}


def kafka_days(kafka: KafkaResource, topic: str, days: list[date],
               expected_task_id: int) -> dict[date, KafkaDay]:
    """Every record of `topic` stamped on one of `days` (oldest first) that Kafka still holds,
    judged by the workers' transform and validate stages (the payloads are not kept).

    Producers stamp event times, so a day's records can lie anywhere after the day's first
    offset: each partition is read from the first day's first offset to its end, not only up to
    the next day's first offset."""
    wanted = {day: day_bounds_ms(day) for day in days}
    windows = kafka.day_windows(topic, days[0])
    judged: dict[date, list[pl.DataFrame]] = {day: [] for day in days}
    for window in windows:
        for start in range(window.start, window.high, READ_CHUNK):
            read = kafka.read_range(topic, window.partition, start,
                                    min(start + READ_CHUNK, window.high))
            for day, (first_ms, next_ms) in wanted.items():
                on_day = [r for r in read.records if first_ms <= r.timestamp_ms < next_ms]
                if on_day:
                    judged[day].append(day_records(raw_batch_from_records(on_day),
                                                   expected_task_id))
    held = {w.partition: (w.low, w.high) for w in windows}
    empty = pl.DataFrame(schema=DAY_RECORD_SCHEMA)
    return {day: KafkaDay(pl.concat([empty, *frames]), held) for day, frames in judged.items()}


def dead_letter_coordinates(kafka: KafkaResource, error_topic: str, input_topic: str,
                            since: date) -> pl.DataFrame:
    """The original (kafka_partition, kafka_offset) and event_id of every readable error record
    about the input topic written since `since` began (less the margin); one row per error
    record."""
    from_ms = day_bounds_ms(since)[0] - FUTURE_STAMP_MARGIN_MS
    found = [pl.DataFrame(schema={"kafka_partition": pl.Int32, "kafka_offset": pl.Int64,
                                  "event_id": pl.String})]
    for window in time_windows(kafka.settings(), error_topic, from_ms, None):
        for start in range(window.start, window.end, READ_CHUNK):
            read = kafka.read_range(error_topic, window.partition, start,
                                    min(start + READ_CHUNK, window.end))
            found.append(
                parse_dead_letters(read.records)
                .filter(pl.col("unreadable").is_null() & (pl.col("kafka_topic") == input_topic))
                .select("kafka_partition", "kafka_offset", "event_id"))
    return pl.concat(found)


def _exists(uri: str) -> bool:
    return DeltaTable.is_deltatable(uri, storage_options=delta_storage_options())


def day_rows(delta: DeltaTablesResource, table: str, day: date,
             columns: dict[str, str | None]) -> pl.DataFrame:
    """The table's rows of `day`: output name -> table column (None: the table lacks it, so the
    output lacks it too). Empty (with the columns) when the table does not exist yet."""
    present = {name: column for name, column in columns.items() if column is not None}
    uri = delta.table_uri(table)
    if not _exists(uri):
        return pl.DataFrame(schema={name: pl.String for name in present})
    return (pl.scan_delta(uri, storage_options=delta_storage_options())
            .filter((pl.col("year") == day.year) & (pl.col("month") == day.month)
                    & (pl.col("day") == day.day))
            .select(pl.col(column).alias(name) for name, column in present.items())
            .collect())


def newest_value(delta: DeltaTablesResource, table: str, column: str) -> datetime | None:
    """The largest value of a timestamp column, from the Delta log's per-file statistics when it
    has them (no data file is read), else by scanning the column. None: no table or no row."""
    uri = delta.table_uri(table)
    if not _exists(uri):
        return None
    files = pl.DataFrame(DeltaTable(uri, storage_options=delta_storage_options())
                         .get_add_actions(flatten=True))
    if files.is_empty():
        return None
    if f"max.{column}" in files.columns and files[f"max.{column}"].null_count() == 0:
        return files[f"max.{column}"].max()
    try:
        return (pl.scan_delta(uri, storage_options=delta_storage_options())
                .select(pl.col(column).max()).collect().item())
    except pl.exceptions.ColumnNotFoundError:
        raise dg.Failure(f"table {table} has no column {column!r}", allow_retries=False) from None
