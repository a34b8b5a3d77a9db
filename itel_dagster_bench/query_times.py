"""Time of each `itel-dagster query` named query on a large tracking table and send ledger.
Asserts nothing.

The tables are generated with polars expressions in the schemas the workers write (the test
checks them against tables written by the workers' stages): `--rows` events over 30 days in
`--appends` appends (several files per day, as before compaction), about 5 events per
assignment moving assigned -> in_progress -> completed, and one ledger row per event.

    python -m itel_dagster_bench.query_times [--rows 1000000] [--repeats 3] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import polars as pl
from deltalake import write_deltalake

from itel_dagster_bench.work_dir import WORK_DIR_HELP, bench_work_dir
from itel_dagster.query import named_queries as named
from itel_dagster.query.named_queries import QueryTables

TRACKING_TABLE = "itel_cabinet_task_tracking"
LEDGER_TABLE = "itel_api_sends"  # the bench builds its own tables under these names
DAYS = 30
LAST_DAY = date(2026, 11, 30)
STATUSES = ["assigned", "in_progress", "completed", "in_progress", "completed"]
UTC_US = pl.Datetime("us", "UTC")


def tracking_frame(rows: int, start: int = 0, total: int | None = None) -> pl.DataFrame:
    """Events start..start+rows of `total`: event i is assignment i % (total/5)'s event
    i // (total/5), its status from STATUSES, its time spread over the 30 days."""
    total = total or rows
    assignments = max(total // len(STATUSES), 1)
    first = datetime.combine(LAST_DAY - timedelta(days=DAYS - 1), datetime.min.time(), timezone.utc)
    i = pl.int_range(start, start + rows, dtype=pl.Int64)
    step = i // assignments
    at = pl.lit(first) + pl.duration(seconds=(step * DAYS * 86_400 // len(STATUSES))
                                     + (i % assignments) * 86_400 * DAYS // len(STATUSES)
                                     // assignments)
    frame = pl.select(
        pl.format("evt-{}", i).alias("event_id"),
        pl.lit(32513, pl.Int64).alias("task_id"),
        (i % assignments + 1).alias("assignment_id"),
        (i % assignments % 9973 + 100000).cast(pl.String).alias("project_id"),
        pl.lit(pl.Series(STATUSES)).gather(step % len(STATUSES)).alias("task_status"),
        pl.lit("CUSTOM_TASK_UPDATED").alias("event_type"),
        pl.lit("iTel Cabinet Task Tracking").alias("trigger_name"),
        pl.concat_str(pl.lit('{"task_id":32513,"assignment_id":'),
                      (i % assignments + 1).cast(pl.String), pl.lit("}")).alias("claimx_task_full"),
        pl.lit("enriched").alias("enrichment_status"),
        pl.lit("itel.cabinet.task.tracking").alias("kafka_topic"),
        (i % 3).cast(pl.Int32).alias("kafka_partition"),
        (i // 3).alias("kafka_offset"),
        at.cast(UTC_US).alias("event_timestamp"),
        (at + pl.duration(seconds=2)).cast(UTC_US).alias("ingested_at"),
    )
    return frame.with_columns(
        pl.col("event_timestamp").dt.year().cast(pl.Int32).alias("year"),
        pl.col("event_timestamp").dt.month().cast(pl.Int32).alias("month"),
        pl.col("event_timestamp").dt.day().cast(pl.Int32).alias("day"),
    )


def ledger_frame(tracking: pl.DataFrame) -> pl.DataFrame:
    """One ledger row per event: 1 in 50 rejected, 1 in 200 dead-lettered, the rest accepted."""
    outcome = (pl.when(pl.int_range(pl.len()) % 50 == 7).then(pl.lit("rejected"))
               .when(pl.int_range(pl.len()) % 200 == 11).then(pl.lit("dead_lettered"))
               .otherwise(pl.lit("accepted")))
    return tracking.select(
        pl.format("{}:accepted", "event_id").alias("ledger_key"),
        "event_id", "assignment_id", "project_id", "task_status",
        pl.concat_str(pl.lit('{"assignment_id":'), pl.col("assignment_id").cast(pl.String),
                      pl.lit("}")).alias("request_payload"),
        pl.col("event_id").alias("idempotency_key"),
        outcome.alias("outcome"),
        pl.when(outcome == "accepted").then(201).otherwise(422).cast(pl.Int32).alias("status_code"),
        pl.lit(1, pl.Int32).alias("attempts"),
        pl.lit("HTTP 201 in 41 ms").alias("attempt_log"),
        pl.lit(41.0).alias("latency_ms"),
        pl.lit('{"status":"ok"}').alias("response_body"),
        pl.format("ITEL-{}", "event_id").alias("itel_id"),
        (pl.col("ingested_at") + pl.duration(seconds=1)).alias("sent_at"),
        "kafka_topic", "kafka_partition", "kafka_offset", "year", "month", "day",
    )


def write_tables(root: Path, rows: int, appends: int) -> None:
    per_append = -(-rows // appends)
    for start in range(0, rows, per_append):
        tracking = tracking_frame(min(per_append, rows - start), start, rows)
        for name, frame in ((TRACKING_TABLE, tracking), (LEDGER_TABLE, ledger_frame(tracking))):
            write_deltalake(str(root / name), frame, mode="append",
                            partition_by=["year", "month", "day"])


def named_queries(tables: QueryTables, assignment: int) -> dict[str, pl.LazyFrame]:
    tracking, sends = tables.scan("tracking"), tables.scan("sends")
    return {
        "recent --limit 20": named.recent(tracking, 20),
        f"lifecycle --assignment {assignment}": named.lifecycle(tracking, assignment),
        "transitions --days 7": named.transitions(tracking, 7, LAST_DAY),
        "transitions": named.transitions(tracking, None, LAST_DAY),
        "daily-counts": named.daily_counts(tracking),
        "send-outcomes": named.send_outcomes(sends),
    }


def time_queries(root: Path, repeats: int) -> list[tuple[str, float, int]]:
    """(query, median seconds, result rows), each query opened and collected anew per repeat."""
    def fresh(query: str) -> pl.LazyFrame:  # the table opened as the command opens it
        return named_queries(QueryTables(str(root), TRACKING_TABLE, LEDGER_TABLE), assignment=7)[query]

    results = []
    for query in named_queries(QueryTables(str(root), TRACKING_TABLE, LEDGER_TABLE), assignment=7):
        timings, height = [], 0
        for _ in range(repeats):
            began = time.perf_counter()
            height = named.collect(fresh(query)).height
            timings.append(time.perf_counter() - began)
        results.append((query, statistics.median(timings), height))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--appends", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=None, help=WORK_DIR_HELP)
    args = parser.parse_args(argv)
    with bench_work_dir(args.work_dir, "itel-query-bench-") as work:
        began = time.perf_counter()
        write_tables(work, args.rows, args.appends)
        print(f"{args.rows:,} rows in each table over {DAYS} days, {args.appends} appends: "
              f"written in {time.perf_counter() - began:.1f} s")
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"{os.cpu_count()} cores, load average {load}; polars {pl.__version__}")
        print(f"{'query':<28} {'median s':>9} {'rows out':>9}")
        for query, seconds, height in time_queries(work, args.repeats):
            print(f"{query:<28} {seconds:>9.3f} {height:>9,}")


if __name__ == "__main__":
    main()
