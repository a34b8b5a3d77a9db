"""What the dedupe window costs: MERGE of new rows into one day of a Delta table, looking for
their keys in that day only (dedupe_days 0), in it and the day before (1), or in the whole table
(no partition predicate, for reference). Prints the median wall time per MERGE; asserts nothing.

    python -m itel_dagster_bench.dedupe_window [--rows-per-day 20000] [--merge-rows 100]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import polars as pl
from deltalake import DeltaTable, write_deltalake

from itel_dagster.resources.delta_tables import PARTITION_COLUMNS, DeltaTableWriter

LAST_DAY = date(2026, 11, 5)
NOTE = "x" * 300  # a tracking row carries its ClaimX task JSON; this stands for it


def day_rows(count: int, day: date) -> pl.DataFrame:
    return pl.DataFrame({
        "event_id": [uuid.uuid4().hex for _ in range(count)],
        "kafka_offset": range(count), "note": [NOTE] * count,
    }).with_columns(pl.lit(day.year, pl.Int32).alias("year"),
                    pl.lit(day.month, pl.Int32).alias("month"),
                    pl.lit(day.day, pl.Int32).alias("day"))


def _merge_unpruned(uri: str, rows: pl.DataFrame) -> None:
    (DeltaTable(uri).merge(rows, "t.event_id = s.event_id", source_alias="s", target_alias="t")
     .when_not_matched_insert_all().execute())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=5, help="day partitions in the table")
    parser.add_argument("--rows-per-day", type=int, default=20_000)
    parser.add_argument("--merge-rows", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="itel-dedupe-window-"))
    uri = str(work / "table")
    try:
        seed = pl.concat([day_rows(args.rows_per_day, LAST_DAY - timedelta(days=back))
                          for back in range(args.days)])
        write_deltalake(uri, seed, partition_by=PARTITION_COLUMNS)
        ways = {
            "dedupe_days 0 (the day)": DeltaTableWriter(uri, dedupe_days=0).merge_new_rows,
            "dedupe_days 1 (the day and the one before)":
                DeltaTableWriter(uri, dedupe_days=1).merge_new_rows,
            "no partition predicate (whole table)": lambda rows: _merge_unpruned(uri, rows),
        }
        timings: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.repeats):  # interleaved: each way sees the same growth in files
            for name, merge in ways.items():
                rows = day_rows(args.merge_rows, LAST_DAY)
                began = time.perf_counter()
                merge(rows)
                timings[name].append((time.perf_counter() - began) * 1000)
        print(f"MERGE of {args.merge_rows} new rows into a day of {args.rows_per_day:,} rows "
              f"({args.days} days in the table), median of {args.repeats}:")
        for name, values in timings.items():
            print(f"  {name:45} {statistics.median(values):8.1f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
