"""Steady state of the Delta tables: what a run's Delta write costs as today's partition fills
with one small file per run, with and without maintenance. Asserts nothing.

Both tables are built as the workers leave them: a 30-day table (closed days written in small
appends, then compacted once, as the maintenance sensor does), then today's partition grown one
append (one commit, one small file) at a time, the rows made by the workers' own stages
(transform, validate, tracking_rows, ledger_rows). At each size: the median per-run write (a new
DeltaTableWriter, as a run makes one, and merge_new_rows: the tracking and the ledger write)
without maintenance, right after compaction + checkpoint, and just before the next compaction
(compact_min_files small files on top); the compaction's time and files; the _delta_log size;
one assignment's lifecycle read over the 30 days.

    python -m itel_dagster_bench.steady [--quick] [--files 1,1000,5000,17000] [--json PATH]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import orjson
import polars as pl
from deltalake import DeltaTable, write_deltalake
from deltalake.transaction import AddAction

from itel_dagster_bench.report import machine
from itel_dagster_bench.work_dir import WORK_DIR_HELP, bench_work_dir
from itel_dagster.devstack import claimx_world as world
from itel_dagster.resources.delta_maintenance import (
    checkpoint,
    compact_day,
    compact_open_day,
    day_file_count,
    file_stats,
    set_retention_properties,
    tombstone_count,
)
from itel_dagster.resources.delta_tables import PARTITION_COLUMNS, DeltaTableWriter, dedupe_since
from itel_dagster.settings.connections import load_itel_connection
from itel_dagster.settings.maintenance import load_maintenance
from itel_dagster_bench.seed_workers import TRACKING_WORKER
from itel_dagster.settings.workers import load_workers
from itel_dagster_bench.stages_throughput import TOPIC, tracking_event
from itel_dagster.stages.enrich import apply_lookups
from itel_dagster.stages.itel_payload import with_payloads
from itel_dagster.stages.raw_batch import raw_batch_from_records
from itel_dagster.stages.send_ledger import ledger_rows
from itel_dagster.stages.tracking_rows import tracking_rows
from itel_dagster.stages.transform import transform
from itel_dagster.stages.validate import validate

TODAY = date(2026, 11, 30)
ASSIGNMENTS = 400  # a run's events spread over this many assignments; each has events every day
TABLES = {"tracking": "event_id", "ledger": "ledger_key"}  # bench name -> the writer's key


def enriched_pool(events: int) -> pl.DataFrame:
    """Events as the tracking stages leave them before the Delta write: real records through
    transform, validate and the ClaimX lookup join (the dev stack's ClaimX world)."""
    records = [(TOPIC, 0, i, 0, None, orjson.dumps(tracking_event(1 + i % ASSIGNMENTS, i)))
               for i in range(events)]
    settings = load_workers()[TRACKING_WORKER]
    valid = validate(transform(raw_batch_from_records(records), worker=settings.name),
                     settings.expected_task_id).valid
    lookups = {a: ("enriched", orjson.dumps(world.claimx_task(a)).decode())
               for a in range(1, ASSIGNMENTS + 1)}
    return apply_lookups(valid, lookups)


# A run every ~5 s: 19,200 runs a day, so that the 17,000-file day and the ~1,700 runs the bench
# adds to a copy of it (a tombstone retention's runs, the runs it measures) stay within one UTC
# day (at 5 s their write times wrapped past midnight).
RUN_SECONDS = 4.5


class RunRows:
    """One run's rows for one day of each table: `size` events of the pool, with new event_ids,
    Kafka offsets, and a Kafka timestamp RUN_SECONDS after the day's previous run (written 2 s
    later: ingested_at, sent_at 3 s later), so files follow each other in time as runs write them."""

    def __init__(self, pool: pl.DataFrame):
        self.pool = pool
        self.run = 0
        self.runs_of_day: dict[date, int] = {}
        self.last_timestamp: datetime | None = None  # the Kafka timestamp of the last run's events
        self.mapping = load_workers()[TRACKING_WORKER].column_mapping or {}
        # The payload template only: no request is made, so any endpoint and token will do.
        env = {"ITEL_CABINET_API_BASE_URL": "http://127.0.0.1:9",
               "ITEL_CABINET_API_TOKEN": "unused", **os.environ}
        self.template = load_itel_connection(env).payload

    def events(self, size: int, day: date) -> pl.DataFrame:
        self.run += 1
        start = (self.run * size) % (self.pool.height - size)
        midnight = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
        self.runs_of_day[day] = self.runs_of_day.get(day, 0) + 1
        self.last_timestamp = midnight + timedelta(
            seconds=(self.runs_of_day[day] * RUN_SECONDS) % 86_400)
        offsets = pl.int_range(pl.len()) + self.run * size
        return self.pool.slice(start, size).with_columns(
            pl.format("evt-{}-{}", pl.lit(self.run), pl.int_range(pl.len())).alias("event_id"),
            offsets.alias("kafka_offset"),
            pl.lit(self.last_timestamp).dt.cast_time_unit("ms").alias("kafka_timestamp"),
            pl.lit(self.last_timestamp + timedelta(seconds=2)).dt.cast_time_unit("us")
            .alias("ingested_at"),
        )

    def rows(self, table: str, size: int, day: date) -> pl.DataFrame:
        events = self.events(size, day)
        if table == "tracking":
            return tracking_rows(events, self.mapping)
        sent = with_payloads(events, self.template).with_columns(
            pl.lit("accepted").alias("outcome"), pl.lit(201).alias("status_code"),
            pl.lit(1).alias("attempts"), pl.lit(["HTTP 201 in 41 ms"]).alias("attempt_log"),
            pl.lit(41.0).alias("latency_ms"), pl.lit('{"status":"ok"}').alias("response_body"),
            pl.format("ITEL-{}", pl.col("event_id")).alias("itel_id"),
            (pl.col("ingested_at") + pl.duration(seconds=1)).alias("sent_at"))
        return ledger_rows(sent, run_id=f"bench-run-{self.run}")


class Table:
    """One Delta table, appended to as the live runs leave it: one small file per run.

    files_per_commit 1: each file is a run's own commit, written by delta-rs as the workers'
    writes are (write_deltalake). Above 1, for building large partitions in minutes: the same
    files (one per run, written with polars, stats as delta-rs writes them) are committed
    files_per_commit at a time, so the log holds fewer, larger commits."""

    def __init__(self, uri: str, name: str, rows: RunRows, rows_per_file: int,
                 files_per_commit: int = 1):
        self.uri, self.name, self.rows, self.rows_per_file = uri, name, rows, rows_per_file
        self.files_per_commit = files_per_commit
        self._table: DeltaTable | None = None

    def append(self, day: date, files: int = 1) -> None:
        if self._table is None and files > 0:
            batch = self.rows.rows(self.name, self.rows_per_file, day)
            write_deltalake(self.uri, batch, partition_by=PARTITION_COLUMNS, mode="append")
            self._table, files = DeltaTable(self.uri), files - 1
        while files > 0:
            group = min(files, self.files_per_commit)
            if group == 1:
                write_deltalake(self._table, self.rows.rows(self.name, self.rows_per_file, day),
                                mode="append")
            else:
                self._table.create_write_transaction(
                    [self._file(day) for _ in range(group)], mode="append",
                    schema=self._table.schema(), partition_by=PARTITION_COLUMNS)
            files -= group
        if self.files_per_commit > 1:
            # A run-per-commit log holds at most 99 commits past its last automatic checkpoint;
            # the generator's large commits must not stand in that tail instead.
            checkpoint(self._table)

    def _file(self, day: date) -> AddAction:
        rows = self.rows.rows(self.name, self.rows_per_file, day)
        relative = f"year={day.year}/month={day.month}/day={day.day}/part-{uuid.uuid4()}.parquet"
        path = Path(self.uri) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        rows.drop(PARTITION_COLUMNS).write_parquet(path)
        return AddAction(relative, path.stat().st_size,
                         {"year": str(day.year), "month": str(day.month), "day": str(day.day)},
                         int(time.time() * 1000), True,
                         file_stats(rows.drop(PARTITION_COLUMNS)))

    def reopen(self) -> None:
        self._table = DeltaTable(self.uri)


@functools.cache
def dedupe_window_hours() -> float:
    """Read once: a bench of half an hour must not see workers.yaml change under it."""
    return load_workers()[TRACKING_WORKER].dedupe_window_hours


def per_run_ms(uri: str, table: str, rows: RunRows, merge_rows: int, repeats: int) -> float:
    """Median wall time of a run's Delta write: the writer a run makes, and its merge_new_rows
    within the dedupe window (the key check and the append) (after one untimed run, so that no size pays for the first use of this table's
    files)."""
    timings = []
    for _ in range(repeats + 1):
        batch = rows.rows(table, merge_rows, TODAY)
        since = dedupe_since(pl.Series([rows.last_timestamp]), dedupe_window_hours())
        began = time.perf_counter()
        writer = DeltaTableWriter(uri, key=TABLES[table], dedupe_days=1)
        writer.merge_new_rows(batch, since=since)
        timings.append((time.perf_counter() - began) * 1000)
    return round(statistics.median(timings[1:]), 1)


def log_size(uri: str) -> dict[str, int]:
    """The commits (JSON) and the latest checkpoint, which is what a run loads with the tail."""
    entries = sorted((Path(uri) / "_delta_log").iterdir())
    commits = [p for p in entries if p.name.endswith(".json")]
    checkpoints = [p for p in entries if p.name.endswith(".checkpoint.parquet")]
    return {"entries": len(entries), "bytes": sum(p.stat().st_size for p in entries),
            "commit_bytes": sum(p.stat().st_size for p in commits),
            "checkpoint_bytes": checkpoints[-1].stat().st_size if checkpoints else 0}


def lifecycle_read_ms(uri: str, repeats: int = 3) -> dict[str, float | int]:
    """One assignment's rows over the whole table (30 days), as a reader asks for them."""
    timings, found = [], 0
    for _ in range(repeats):
        began = time.perf_counter()
        found = pl.scan_delta(uri).filter(pl.col("assignment_id") == 7) \
            .select("event_id", "task_status", "year", "month", "day").collect().height
        timings.append((time.perf_counter() - began) * 1000)
    return {"ms": round(statistics.median(timings), 1), "rows": found}


def runs_per_retention(tombstone_hours: float) -> int:
    """The runs of one tombstone retention at the bench's pace."""
    return round(tombstone_hours * 3600 / RUN_SECONDS)


def steady_tombstones(table: Table, args, target_size: int, compact_min_files: int) -> None:
    """The table as it stands in steady state, some hours after this compaction: the checkpoint
    job has left out the tombstones older than the tombstone retention, and carries those of the
    last tombstone retention: that many hours of runs, compacted every compact_min_files files as
    the compaction sensor does."""
    set_retention_properties(DeltaTable(table.uri), 0, args.log_hours)
    checkpoint(DeltaTable(table.uri))  # as the checkpoint job, tombstone_hours later
    set_retention_properties(DeltaTable(table.uri), args.tombstone_hours, args.log_hours)
    table.reopen()  # a writer's snapshot from before the property change may not commit
    runs = runs_per_retention(args.tombstone_hours)
    while runs > 0:
        chunk = min(runs, compact_min_files)
        table.append(TODAY, chunk)
        now = table.rows.last_timestamp + timedelta(seconds=RUN_SECONDS)
        compact_open_day(DeltaTable(table.uri), TODAY, now, target_size)
        table.reopen()
        runs -= chunk
    checkpoint(DeltaTable(table.uri))


def build_closed_days(table: Table, days: int, files: int, target_size: int) -> list[int]:
    """Days before TODAY in small appends, each compacted once: files per closed day after."""
    after = []
    for back in range(days, 0, -1):
        table.append(TODAY - timedelta(days=back), files)
    for back in range(days, 0, -1):
        result = compact_day(DeltaTable(table.uri), TODAY - timedelta(days=back), target_size)
        after.append(result.files_after)
    table.reopen()
    return after


def measure_size(work: Path, table: Table, files: int, args, target_size: int,
                 compact_min_files: int) -> dict:
    """Today at `files` small files: the run's write without maintenance, then on a copy of
    the table compacted and checkpointed (in steady state: steady_tombstones), and with
    compact_min_files more small files. The copy's runs do not move the main table's clock."""
    no_maintenance = per_run_ms(table.uri, table.name, table.rows, args.merge_rows, args.repeats)
    figures = {"no_maintenance_ms": no_maintenance, "delta_log": log_size(table.uri),
               "lifecycle_read": lifecycle_read_ms(table.uri)}
    copy = str(work / f"{table.name}-maintained")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(table.uri, copy)
    began = time.perf_counter()
    # As the compaction job does for a day live runs still write, at the bench's clock.
    now = table.rows.last_timestamp + timedelta(seconds=RUN_SECONDS)
    compacted = compact_open_day(DeltaTable(copy), TODAY, now, target_size)
    checkpoint(DeltaTable(copy))
    seconds = round(time.perf_counter() - began, 2)
    read_compacted = lifecycle_read_ms(copy)  # the same rows as the read without maintenance
    clock = (dict(table.rows.runs_of_day), table.rows.last_timestamp)
    refill = Table(copy, table.name, table.rows, args.rows_per_file, args.files_per_commit)
    steady_tombstones(refill, args, target_size, compact_min_files)
    after = per_run_ms(copy, table.name, table.rows, args.merge_rows, args.repeats)
    figures.update({
        "compaction_seconds": seconds, "files_after_compaction": compacted.files_after,
        "compacted_ms": after, "tombstones": tombstone_count(DeltaTable(copy)),
        "files_after_steady": day_file_count(DeltaTable(copy), TODAY),
        "lifecycle_read_compacted": read_compacted,
    })
    maintained = Table(copy, table.name, table.rows, args.rows_per_file)  # runs' own commits
    maintained.reopen()
    maintained.append(TODAY, compact_min_files)
    before_next = per_run_ms(copy, table.name, table.rows, args.merge_rows, args.repeats)
    figures["before_next_compaction_ms"] = before_next
    shutil.rmtree(copy, ignore_errors=True)
    table.rows.runs_of_day, table.rows.last_timestamp = clock
    return figures


def bench_table(work: Path, name: str, rows: RunRows, args, target_size: int,
                compact_min_files: int, progress) -> dict:
    table = Table(str(work / name), name, rows, args.rows_per_file, args.files_per_commit)
    began = time.perf_counter()
    closed = build_closed_days(table, args.closed_days, args.closed_day_files, target_size)
    result = {"closed_day_files_after_compaction": closed,
              "closed_days_build_seconds": round(time.perf_counter() - began, 1),
              "sizes": {}, "build_seconds": {}}
    for size in args.files:
        began = time.perf_counter()
        table.append(TODAY, size - day_file_count(DeltaTable(table.uri), TODAY))
        result["build_seconds"][size] = round(time.perf_counter() - began, 1)
        result["sizes"][size] = measure_size(work, table, size, args, target_size,
                                             compact_min_files)
        progress(f"{name}: {size} files {json.dumps(result['sizes'][size])}")
    # The full day compacted, as the closed-day compaction leaves it at midnight.
    full = compact_day(DeltaTable(table.uri), TODAY, target_size)
    result["full_day_files_after_compaction"] = full.files_after
    result["full_day_rows"] = pl.scan_delta(table.uri).filter(
        (pl.col("year") == TODAY.year) & (pl.col("month") == TODAY.month)
        & (pl.col("day") == TODAY.day)).select(pl.len()).collect().item()
    return result


def print_table(doc: dict) -> None:
    print(f"\nPer-run Delta write (median of {doc['options']['repeats']}, "
          f"{doc['options']['merge_rows']} rows, ms) as today's partition grows:")
    print(f"{'table':9} {'files':>6} {'no maint.':>10} {'compacted':>10} {'+min files':>11} "
          f"{'compact s':>10} {'files after':>12} {'tombstones':>11} {'log entries':>12} "
          f"{'ckpt MB':>8} {'30-day read ms':>15} {'(compacted)':>12}")
    for name, result in doc["tables"].items():
        for size, f in result["sizes"].items():
            print(f"{name:9} {size:>6} {f['no_maintenance_ms']:>10} {f['compacted_ms']:>10} "
                  f"{f['before_next_compaction_ms']:>11} {f['compaction_seconds']:>10} "
                  f"{f['files_after_compaction']:>12} {f['tombstones']:>11} "
                  f"{f['delta_log']['entries']:>12} "
                  f"{f['delta_log']['checkpoint_bytes'] / 1e6:>8.1f} "
                  f"{f['lifecycle_read']['ms']:>15} {f['lifecycle_read_compacted']['ms']:>12}")
        full = result["full_day_files_after_compaction"]
        print(f"{name:9} closed days after compaction: max "
              f"{max(result['closed_day_files_after_compaction'])} files; the full day of "
              f"{result['full_day_rows']:,} rows: {full} files")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke-test size: --files 1,20,60 --closed-days 3 "
                        "--closed-day-files 4 --repeats 2 --compact-min-files 10 "
                        "--tombstone-hours 0.02")
    parser.add_argument("--files", default="1,1000,5000,17000",
                        help="today's partition sizes measured, in files")
    parser.add_argument("--rows-per-file", type=int, default=20, help="rows a run adds to a day")
    parser.add_argument("--merge-rows", type=int, default=20, help="rows of the measured run")
    parser.add_argument("--closed-days", type=int, default=29)
    parser.add_argument("--closed-day-files", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--files-per-commit", type=int, default=1,
                        help="1: each small file is its own commit, as runs make them; more "
                        "builds large partitions faster (same files, fewer commits)")
    parser.add_argument("--compact-min-files", type=int, default=None,
                        help="[default: delta_maintenance.yaml's compact_min_files]")
    parser.add_argument("--tombstone-hours", type=float, default=None,
                        help="[default: delta_maintenance.yaml's tombstone_retention_hours]")
    parser.add_argument("--tables", default="tracking,ledger")
    parser.add_argument("--work-dir", type=Path, default=None, help=WORK_DIR_HELP)
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.files, args.closed_days, args.closed_day_files, args.repeats = "1,20,60", 3, 4, 2
        args.compact_min_files = args.compact_min_files or 10
    args.files = sorted(int(n) for n in args.files.split(","))
    maintenance = load_maintenance()
    if args.tombstone_hours is None:
        args.tombstone_hours = 0.02 if args.quick else maintenance.tombstone_retention_hours
    args.log_hours = maintenance.log_retention_hours
    compact_min_files = args.compact_min_files or maintenance.compact_min_files
    target_size = maintenance.target_file_mb * 1024 * 1024
    began = time.perf_counter()

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - began:7.1f} s] {line}", flush=True)

    rows = RunRows(enriched_pool(max(2_000, args.rows_per_file * 4, args.merge_rows * 4)))
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    doc = {"options": {**options, "compact_min_files": compact_min_files,
                       "target_file_mb": maintenance.target_file_mb,
                       "runs_per_tombstone_retention": runs_per_retention(args.tombstone_hours)},
           "machine": machine(), "tables": {}}
    with bench_work_dir(args.work_dir, "itel-steady-") as work:
        for name in args.tables.split(","):
            doc["tables"][name] = bench_table(work, name, rows, args, target_size,
                                              compact_min_files, progress)
    doc["seconds"] = round(time.perf_counter() - began, 1)
    print_table(doc)
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
