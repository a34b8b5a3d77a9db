"""Maintenance of one Delta table: compaction of a day partition, checkpoints, vacuum and log
cleanup. Every commit that loses to a concurrent one (a live run's MERGE, a backfill) backs off
and retries on a new snapshot; after its retries it gives up for this turn and says so, never
raising into the caller's run. It never changes a row: compaction only rewrites files.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import TypeVar
from urllib.parse import unquote

import polars as pl
import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.fs import DeltaStorageHandler
from deltalake.transaction import AddAction, RemoveAction
from pyarrow.fs import PyFileSystem

from itel_dagster.resources.delta_tables import PARTITION_COLUMNS, write_time_column

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
    return len(table.file_uris(file_pruning_predicate=day_filters(day)))


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
                        ) -> pl.DataFrame:
    """One row per file of the day written within one BUCKET of write time (by its min/max
    statistics, all before `settled`) whose bucket holds at least 2 such files: path, size,
    partition values, bucket start."""
    actions = pl.DataFrame(table.get_add_actions(flatten=True))
    low, high = pl.col(f"min.{column}"), pl.col(f"max.{column}")
    bucket = low.dt.truncate(f"{int(BUCKET.total_seconds())}s")
    return (
        actions.filter(
            (pl.col("partition.year").cast(pl.Int64) == day.year)
            & (pl.col("partition.month").cast(pl.Int64) == day.month)
            & (pl.col("partition.day").cast(pl.Int64) == day.day)
            & (high < bucket + BUCKET) & (high < settled))
        .with_columns(bucket.alias("bucket"))
        .filter(pl.len().over("bucket") >= 2)
        .select("path", "size_bytes", "bucket",
                *(pl.col(f"partition.{c}").cast(pl.String).alias(c) for c in PARTITION_COLUMNS))
    )


def _stat_value(value):
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, date):
        return value.isoformat()
    return value


def file_stats(rows: pl.DataFrame) -> str:
    """Delta `stats` of one file of `rows`: numRecords, nullCount, and min/max of the primitive
    columns (strings only up to 32 characters, as delta-rs truncates longer ones), so readers
    prune by them as they do by the files delta-rs writes."""
    primitive = [c for c, t in rows.schema.items()
                 if t.is_numeric() or t.is_temporal() or t == pl.Boolean
                 or (t == pl.String and (rows[c].str.len_chars().max() or 0) <= 32)]

    def values(frame: pl.DataFrame) -> dict:
        return {k: _stat_value(v) for k, v in frame.row(0, named=True).items() if v is not None}

    nulls = rows.select(pl.col(c).null_count() for c, t in rows.schema.items()
                        if not isinstance(t, pl.Struct))
    return json.dumps({"numRecords": rows.height,
                       "minValues": values(rows.select(pl.col(primitive).min())),
                       "maxValues": values(rows.select(pl.col(primitive).max())),
                       "nullCount": nulls.row(0, named=True)})


def _rewrite_buckets(table: DeltaTable, files: pl.DataFrame, column: str,
                     storage_options: dict[str, str] | None) -> list:
    """Each bucket's files read and written again as one file (rows in write-time order);
    the actions that swap them: one add per bucket, one remove per old file. dataChange true,
    as a predicate overwrite has it: delta-rs then refuses the commit when a concurrent one
    removed any of these files (a backfill's replace of the day)."""
    filesystem = PyFileSystem(DeltaStorageHandler(table.table_uri, storage_options))
    now_ms = int(time.time() * 1000)
    actions: list = []
    for (_bucket,), group in files.group_by("bucket", maintain_order=True):
        old = group["path"].to_list()
        rows = pl.from_arrow(pq.read_table([unquote(p) for p in old], filesystem=filesystem,
                                           partitioning=None)).sort(column)
        values = {c: group[c][0] for c in PARTITION_COLUMNS}
        directory = "/".join(f"{c}={values[c]}" for c in PARTITION_COLUMNS)
        path = f"{directory}/part-compacted-{uuid.uuid4()}.parquet"
        pq.write_table(rows.to_arrow(), path, filesystem=filesystem)
        size = filesystem.get_file_info(path).size
        actions.append(AddAction(path, size, values, now_ms, True, file_stats(rows)))
        actions.extend(RemoveAction(p, True, now_ms, s, values)
                       for p, s in zip(old, group["size_bytes"].to_list()))
    return actions


def compact_open_day(table: DeltaTable, day: date, now: datetime, target_size: int,
                     retrying: Retrying = Retrying(),
                     storage_options: dict[str, str] | None = None) -> CompactResult:
    """Compaction of a day live runs still write: the files of each BUCKET of write time
    (WRITE_TIME_COLUMNS) become one file, and every bucket's swap is ONE commit (removes of the
    old files, adds of the new; the same rows). A concurrent commit that removed one of those
    files (a backfill's replace, another compaction) makes it fail and run again on a new
    snapshot; a live run's append does not touch them. Cost: the files rewritten, not the day or
    the number of buckets. A table without a write-time column is bin-packed (compact_day)."""
    column = write_time_column(f.name for f in table.schema().fields)
    if column is None:
        return compact_day(table, day, target_size, retrying)
    before = day_file_count(table, day)
    settled = now - SETTLE

    def attempt_once(attempt: int) -> int:
        table.update_incremental()
        files = _buckets_to_compact(table, day, column, settled)
        if files.is_empty():
            return 0
        actions = _rewrite_buckets(table, files, column, storage_options)
        try:
            table.create_write_transaction(actions, mode="append", schema=table.schema(),
                                           partition_by=PARTITION_COLUMNS)
        except CommitFailedError:
            filesystem = PyFileSystem(DeltaStorageHandler(table.table_uri, storage_options))
            for action in actions:  # the new files no commit refers to
                if isinstance(action, AddAction):
                    filesystem.delete_file(action.path)
            raise
        return files.height

    rewritten, attempts = retrying.run(attempt_once)
    table.update_incremental()
    return CompactResult(day=day.isoformat(), files_before=before,
                         files_after=day_file_count(table, day), attempts=attempts,
                         compacted=bool(rewritten), gave_up=rewritten is None)


def checkpoint(table: DeltaTable) -> int:
    """A checkpoint at the table's current version (readers load it instead of every commit).
    It keeps the tombstones of files removed within delta.deletedFileRetentionDuration."""
    table.update_incremental()
    table.create_checkpoint()
    return table.version()


def tombstone_count(table: DeltaTable) -> int:
    """Removed files the table state still carries (every run loads them with the checkpoint):
    what a tombstone-only vacuum at retention 0 would list."""
    return len(table.vacuum(0, dry_run=True, enforce_retention_duration=False))


def retention_properties(tombstone_hours: int, log_hours: int) -> dict[str, str]:
    return {"delta.deletedFileRetentionDuration": f"interval {tombstone_hours} hours",
            "delta.logRetentionDuration": f"interval {log_hours} hours"}


def set_retention_properties(table: DeltaTable, tombstone_hours: int, log_hours: int,
                             retrying: Retrying = Retrying()) -> bool:
    """Writes the retention into the table's properties, once (True when it changed them).

    delta.deletedFileRetentionDuration is how long a removed file's tombstone stays in the
    table state: every checkpoint carries the tombstones younger than it, and every run loads
    them. A day's compactions remove ~17,000 run files, so 7 days of tombstones would cost each
    run's table load ~0.2 s; tombstone_retention_hours keeps them as long as a reader needs."""
    wanted = retention_properties(tombstone_hours, log_hours)

    def set_properties(_attempt: int) -> bool:
        table.update_incremental()
        current = table.metadata().configuration
        if all(current.get(k) == v for k, v in wanted.items()):
            return False
        table.alter.set_table_properties(wanted)
        return True

    changed, _ = retrying.run(set_properties)
    return bool(changed)


def vacuum_and_clean_log(table: DeltaTable, vacuum_hours: int, tombstone_hours: int,
                         log_hours: int, retrying: Retrying = Retrying()) -> dict[str, int | bool]:
    """Delete the data files the table no longer references that were written more than
    vacuum_hours ago and whose tombstone (if any) is past tombstone_hours, and _delta_log entries
    older than log_hours that a checkpoint covers.

    A full vacuum (delta-rs `full=True`): it lists the table's files and keeps every file the
    snapshot references (active, or removed within the tombstone retention) and every file
    younger than vacuum_hours by its write time. So no file younger than vacuum_hours is ever
    deleted, in-flight writers' files included, and files no commit ever added (a run killed
    between writing and committing) go too. The retention goes into the table properties first,
    so other Delta clients vacuuming the table keep the tombstones as long."""
    changed = set_retention_properties(table, tombstone_hours, log_hours, retrying)
    deleted, _ = retrying.run(lambda _attempt: table.vacuum(
        retention_hours=vacuum_hours, dry_run=False, enforce_retention_duration=False,
        full=True))
    table.update_incremental()
    table.create_checkpoint()
    table.cleanup_metadata()
    return {"files_deleted": len(deleted or []), "properties_set": changed,
            "vacuum_gave_up": deleted is None}
