"""Maintenance of one Delta table: compaction of a day partition, checkpoints, vacuum and log
cleanup. Every commit that loses to a concurrent one (a live run's MERGE, a backfill) backs off
and retries on a new snapshot; after its retries it gives up for this turn and says so, never
raising into the caller's run. It never changes a row: compaction only rewrites files.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TypeVar

import polars as pl
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from itel_dagster.resources.delta_tables import time_literal, write_time_column

T = TypeVar("T")


@dataclass(frozen=True)
class CompactResult:
    day: str
    files_before: int
    files_after: int
    attempts: int  # > 1: a concurrent commit won, the compaction ran again on a new snapshot
    compacted: bool  # False: nothing to do, or every attempt lost to a concurrent commit
    gave_up: bool = False


@dataclass(frozen=True)
class Retrying:
    """How a maintenance commit yields to concurrent ones: exponential backoff with full jitter."""

    max_retries: int = 5
    backoff_seconds: float = 1.0

    def run(self, attempt_once: Callable[[int], T]) -> tuple[T | None, int]:
        """(result, attempts); result None when every attempt lost to a concurrent commit."""
        for attempt in range(1, self.max_retries + 2):
            try:
                return attempt_once(attempt), attempt
            except CommitFailedError:
                if attempt > self.max_retries:
                    return None, attempt
                time.sleep(random.uniform(0, self.backoff_seconds * 2 ** (attempt - 1)))
        raise AssertionError("unreachable")


def day_filters(day: date) -> list[tuple[str, str, str]]:
    return [("year", "=", str(day.year)), ("month", "=", str(day.month)),
            ("day", "=", str(day.day))]


def open_table(uri: str, storage_options: dict[str, str] | None = None) -> DeltaTable | None:
    try:
        return DeltaTable(uri, storage_options=storage_options)
    except TableNotFoundError:
        return None


def day_file_count(table: DeltaTable, day: date) -> int:
    return len(table.file_uris(partition_filters=day_filters(day)))


def compact_day(table: DeltaTable, day: date, target_size: int,
                retrying: Retrying = Retrying()) -> CompactResult:
    """Bin-pack the day's small files into files of about target_size bytes (delta-rs
    optimize.compact with a partition filter). `table` may be a stale snapshot: a lost commit
    reloads it and compacts again."""
    before = day_file_count(table, day)

    def attempt_once(attempt: int) -> int:
        if attempt > 1:
            table.update_incremental()
        if day_file_count(table, day) < 2:
            return 0
        return table.optimize.compact(partition_filters=day_filters(day),
                                      target_size=target_size)["numFilesRemoved"]

    removed, attempts = retrying.run(attempt_once)
    return CompactResult(day=day.isoformat(), files_before=before,
                         files_after=day_file_count(table, day), attempts=attempts,
                         compacted=bool(removed), gave_up=removed is None)


# An open day is compacted in buckets of write time: a live run's dedupe (rows written within its
# window) then reads the few buckets of the window, not the day. Rows written in the last SETTLE
# stay as the live runs wrote them (fewer conflicts with in-flight MERGEs).
BUCKET = timedelta(minutes=15)
SETTLE = timedelta(minutes=1)


def _buckets_to_compact(table: DeltaTable, day: date, column: str, settled: datetime
                        ) -> dict[datetime, int]:
    """bucket start -> files of the day written within that bucket (by their min/max statistics,
    all before `settled`), for buckets of at least 2 such files."""
    actions = pl.DataFrame(table.get_add_actions(flatten=True))
    low, high = pl.col(f"min.{column}"), pl.col(f"max.{column}")
    bucket = low.dt.truncate(f"{int(BUCKET.total_seconds())}s")
    return dict(
        actions.filter(
            (pl.col("partition.year").cast(pl.Int64) == day.year)
            & (pl.col("partition.month").cast(pl.Int64) == day.month)
            & (pl.col("partition.day").cast(pl.Int64) == day.day)
            & (high < bucket + BUCKET) & (high < settled))
        .group_by(bucket.alias("bucket")).len().filter(pl.col("len") >= 2).rows())


def compact_open_day(table: DeltaTable, day: date, now: datetime, target_size: int,
                     retrying: Retrying = Retrying()) -> CompactResult:
    """Compaction of a day live runs still write: the files of each BUCKET of write time
    (WRITE_TIME_COLUMNS) into one, by a predicate overwrite of the bucket's rows (the same rows,
    in new files; a live commit of rows of that bucket in between makes it fail and run again).
    Cost: the buckets with new files since the last compaction, not the day. A table without a
    write-time column is bin-packed (compact_day)."""
    column = write_time_column(f.name for f in table.schema().fields)
    if column is None:
        return compact_day(table, day, target_size, retrying)
    before = day_file_count(table, day)
    settled = now - SETTLE

    def attempt_once(attempt: int) -> int:
        rewritten = 0
        table.update_incremental()
        for low, files in sorted(_buckets_to_compact(table, day, column, settled).items()):
            high = min(low + BUCKET, settled)
            predicate = (f"year = {day.year} AND month = {day.month} AND day = {day.day}"
                         f" AND {column} >= '{time_literal(low)}'"
                         f" AND {column} < '{time_literal(high)}'")
            rows = table.to_pyarrow_table(filters=[
                ("year", "=", day.year), ("month", "=", day.month), ("day", "=", day.day),
                (column, ">=", low), (column, "<", high)])
            write_deltalake(table, rows, mode="overwrite", predicate=predicate,
                            target_file_size=target_size)
            table.update_incremental()
            rewritten += files
        return rewritten

    rewritten, attempts = retrying.run(attempt_once)
    table.update_incremental()
    return CompactResult(day=day.isoformat(), files_before=before,
                         files_after=day_file_count(table, day), attempts=attempts,
                         compacted=bool(rewritten), gave_up=rewritten is None)


def checkpoint(table: DeltaTable) -> int:
    """A checkpoint at the table's current version (readers load it instead of every commit)."""
    table.update_incremental()
    table.create_checkpoint()
    return table.version()


def retention_properties(vacuum_hours: int, log_hours: int) -> dict[str, str]:
    return {"delta.deletedFileRetentionDuration": f"interval {vacuum_hours} hours",
            "delta.logRetentionDuration": f"interval {log_hours} hours"}


def vacuum_and_clean_log(table: DeltaTable, vacuum_hours: int, log_hours: int,
                         retrying: Retrying = Retrying()) -> dict[str, int | bool]:
    """Delete data files removed more than vacuum_hours ago, and _delta_log entries older than
    log_hours that a checkpoint covers. The retention periods are written into the table's
    properties first (once), so any other Delta client vacuuming it keeps them too."""
    wanted = retention_properties(vacuum_hours, log_hours)

    def set_properties(_attempt: int) -> bool:
        table.update_incremental()
        current = table.metadata().configuration
        if all(current.get(k) == v for k, v in wanted.items()):
            return False
        table.alter.set_table_properties(wanted)
        return True

    changed, _ = retrying.run(set_properties)
    # Vacuum first: it finds removed files by their log entries (remove actions), which a
    # checkpoint leaves out once they are older than the retention and cleanup then deletes.
    deleted, _ = retrying.run(lambda _attempt: table.vacuum(
        retention_hours=vacuum_hours, dry_run=False, enforce_retention_duration=False))
    table.update_incremental()
    table.create_checkpoint()
    table.cleanup_metadata()
    return {"files_deleted": len(deleted or []), "properties_set": bool(changed),
            "vacuum_gave_up": deleted is None}
