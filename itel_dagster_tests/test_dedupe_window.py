"""Dedupe within the write-time window, on real Delta tables on disk: a duplicate key is still not
inserted twice, and the MERGE, the ledger lookup and an open day's compaction leave the files
written before the window unread. 'Unread' is checked by deleting those files' Parquet from disk:
any read of them fails.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake

from itel_dagster.resources.delta_maintenance import Retrying, compact_day, compact_open_day
from itel_dagster.resources.delta_tables import (
    PARTITION_COLUMNS,
    DeltaTablesResource,
    DeltaTableWriter,
    dedupe_since,
)

DAY = date(2026, 11, 30)
START = datetime(2026, 11, 30, 8, tzinfo=timezone.utc)
WINDOW_HOURS = 1.0
# (table, key, write-time column) as the workers write them: tracking rows and send-ledger rows.
TABLES = [("itel_cabinet_task_tracking", "event_id", "ingested_at"),
          ("itel_api_sends", "ledger_key", "sent_at")]


def run_rows(key: str, written: str, at: datetime, n: int = 5, ids: list[str] | None = None
             ) -> pl.DataFrame:
    """One run's rows, written at `at` (random event ids, so no key statistics prune)."""
    ids = ids or [str(uuid.uuid4()) for _ in range(n)]
    frame = pl.DataFrame({
        "event_id": ids, "payload": [f"task {i}" * 10 for i in range(len(ids))],
        written: [at] * len(ids), "year": DAY.year, "month": DAY.month, "day": DAY.day,
    }).with_columns(pl.col(written).cast(pl.Datetime("us", "UTC")),
                    pl.col(PARTITION_COLUMNS).cast(pl.Int32))
    if key != "event_id":
        frame = frame.with_columns(pl.format("{}:accepted", "event_id").alias(key))
    return frame


def since_for(record_time: datetime) -> datetime:
    return dedupe_since(pl.Series([record_time]), WINDOW_HOURS)


def build_day(uri: str, key: str, written: str, old_runs: int, recent_runs: int
              ) -> tuple[list[pl.DataFrame], list[pl.DataFrame]]:
    """A day of one small file per run: old_runs written 3 h before `now`, recent_runs in the
    last minutes. now = START + 3 h."""
    old = [run_rows(key, written, START + timedelta(minutes=i)) for i in range(old_runs)]
    now = START + timedelta(hours=3)
    recent = [run_rows(key, written, now - timedelta(minutes=recent_runs - i))
              for i in range(recent_runs)]
    write_deltalake(uri, old[0], partition_by=PARTITION_COLUMNS)
    table = DeltaTable(uri)
    for rows in old[1:] + recent:
        write_deltalake(table, rows, mode="append")
    return old, recent


def delete_files_written_before(uri: str, column: str, before: datetime) -> int:
    """Removes from disk (not from the log) the Parquet of files whose rows were all written
    before `before`: reading any of them afterwards fails."""
    actions = pl.DataFrame(DeltaTable(uri).get_add_actions(flatten=True))
    paths = actions.filter(pl.col(f"max.{column}") < before)["path"].to_list()
    for path in paths:
        (Path(uri) / path).unlink()
    return len(paths)


@pytest.mark.parametrize(("name", "key", "written"), TABLES)
def test_a_duplicate_inside_the_window_is_not_inserted_twice(tmp_path, name, key, written):
    uri = str(tmp_path / name)
    writer = DeltaTableWriter(uri, key=key, dedupe_days=1)
    record_time = START + timedelta(hours=2)
    first = run_rows(key, written, record_time + timedelta(seconds=2))
    assert writer.merge_new_rows(first, since=since_for(record_time)).inserted == 5
    # The same records again (a redelivery), written 50 minutes later: nothing new.
    again = first.with_columns(pl.col(written) + timedelta(minutes=50))
    result = writer.merge_new_rows(again, since=since_for(record_time))
    assert (result.inserted, result.already_present) == (0, 5)
    # A copy published again 50 minutes later (a new Kafka timestamp): still inside the window.
    later = record_time + timedelta(minutes=50)
    result = writer.merge_new_rows(again, since=since_for(later))
    assert (result.inserted, result.already_present) == (0, 5)
    table = pl.read_delta(uri)
    assert table.height == 5 == table[key].n_unique()


@pytest.mark.parametrize(("name", "key", "written"), TABLES)
def test_the_merge_on_a_day_of_many_files_reads_only_the_files_of_the_window(
        tmp_path, name, key, written):
    uri = str(tmp_path / name)
    old, recent = build_day(uri, key, written, old_runs=40, recent_runs=5)
    record_time = START + timedelta(hours=3) - timedelta(minutes=10)
    since = since_for(record_time)
    writer = DeltaTableWriter(uri, key=key, dedupe_days=1)
    # A recent run's records redelivered, with 5 new ones.
    batch = pl.concat([recent[-1], run_rows(key, written, START + timedelta(hours=3))])
    result = writer.merge_new_rows(batch, since=since)
    assert (result.inserted, result.already_present) == (5, 5)
    # The 40 old files gone from disk: the windowed check never reads them, a whole-day one does.
    assert delete_files_written_before(uri, written, since) == 40
    again = run_rows(key, written, START + timedelta(hours=3), ids=recent[0]["event_id"].to_list())
    assert writer.merge_new_rows(again, since=since).inserted == 0
    with pytest.raises(Exception, match="(?i)not found|no such file"):
        writer.merge_new_rows(run_rows(key, written, START + timedelta(hours=3)))


def test_the_ledger_lookup_reads_only_the_files_of_the_window(tmp_path):
    delta = DeltaTablesResource(root=str(tmp_path))
    old, recent = build_day(delta.table_uri("itel_api_sends"), "ledger_key", "sent_at",
                            old_runs=30, recent_runs=3)
    since = since_for(START + timedelta(hours=3) - timedelta(minutes=10))
    assert delete_files_written_before(delta.table_uri("itel_api_sends"), "sent_at", since) == 30
    wanted = recent[1]["event_id"].to_list() + ["not-sent"]
    days = [(DAY.year, DAY.month, DAY.day)]
    found = delta.values_present("itel_api_sends", "event_id", wanted, days, since=since)
    assert found == set(recent[1]["event_id"])
    rows = delta.rows_present("itel_api_sends", "event_id", wanted, days,
                              ["event_id", "sent_at"], since=since)
    assert set(rows["event_id"]) == set(recent[1]["event_id"])
    with pytest.raises(Exception, match="(?i)not found|no such file"):
        delta.values_present("itel_api_sends", "event_id", wanted, days)


@pytest.mark.parametrize(("name", "key", "written"), TABLES)
def test_an_open_days_compaction_keeps_the_window_apart_from_the_older_rows(
        tmp_path, name, key, written):
    uri = str(tmp_path / name)
    old, recent = build_day(uri, key, written, old_runs=30, recent_runs=8)
    now = START + timedelta(hours=3)
    before = pl.read_delta(uri).sort(key)
    result = compact_open_day(DeltaTable(uri), DAY, now, 256 * 1024 * 1024)
    # 15-minute buckets of write time: 08:00 and 08:15 (the old runs), 10:45 (10:52-10:58); the
    # file written in the last minute (10:59) stays as its run wrote it.
    assert (result.compacted, result.files_before, result.files_after) == (True, 38, 4)
    assert pl.read_delta(uri).sort(key).equals(before)  # same rows, fewer files
    # A live run's window starts after every old row: the old tier is a file it skips.
    since = since_for(now - timedelta(seconds=30))
    actions = pl.DataFrame(DeltaTable(uri).get_add_actions(flatten=True))
    skipped = actions.filter(pl.col(f"max.{written}") < since)
    assert skipped["num_records"].sum() == 30 * 5  # every old row, and only those
    assert delete_files_written_before(uri, written, since) == skipped.height
    writer = DeltaTableWriter(uri, key=key, dedupe_days=1)
    assert writer.merge_new_rows(recent[0], since=since).inserted == 0


def test_a_bin_packing_compaction_would_mix_the_old_rows_into_the_windows_file(tmp_path):
    # The negative control of the test above: compact_day packs the whole day into one file,
    # which every live MERGE reads, old rows and all.
    uri = str(tmp_path / "t")
    build_day(uri, "event_id", "ingested_at", old_runs=30, recent_runs=8)
    compact_day(DeltaTable(uri), DAY, 256 * 1024 * 1024)
    since = since_for(START + timedelta(hours=3) - timedelta(seconds=30))
    assert delete_files_written_before(uri, "ingested_at", since) == 0


def test_live_merges_during_open_day_compactions_lose_no_row_and_write_each_key_once(tmp_path):
    uri = str(tmp_path / "t")
    build_day(uri, "event_id", "ingested_at", old_runs=20, recent_runs=8)
    now = START + timedelta(hours=3)
    writer = DeltaTableWriter(uri, dedupe_days=1)
    stop = threading.Event()

    def live_runs() -> list[str]:
        # Live runs of the last seconds: their MERGE reads the 10:45 bucket's files, which the
        # compactions replace, so MERGEs lose commits and run again.
        at, ids = now - timedelta(seconds=10), []
        while not stop.is_set():
            batch = run_rows("event_id", "ingested_at", at, n=3)
            writer.merge_new_rows(batch, since=since_for(at))
            ids.extend(batch["event_id"].to_list())
        return ids

    with ThreadPoolExecutor(max_workers=1) as pool:
        live = pool.submit(live_runs)
        results = [compact_open_day(DeltaTable(uri), DAY, now, 64 * 1024 * 1024,
                                    Retrying(max_retries=8, backoff_seconds=0.01))
                   for _ in range(3)]
        stop.set()
        written = live.result(timeout=60)  # raises what a live MERGE raised
    assert written

    assert any(r.compacted for r in results)
    table = pl.read_delta(uri)
    assert set(written) <= set(table["event_id"])
    assert table.height == table["event_id"].n_unique() == 28 * 5 + len(written)


def _day_of_buckets(uri: str, runs: int) -> datetime:
    """`runs` runs a minute apart from START (08:00), each its own commit and file: runs/15
    buckets of write time, none compacted yet. Returns the compaction's `now`."""
    write_deltalake(uri, run_rows("event_id", "ingested_at", START), partition_by=PARTITION_COLUMNS)
    table = DeltaTable(uri)
    for i in range(1, runs):
        write_deltalake(table, run_rows("event_id", "ingested_at", START + timedelta(minutes=i)),
                        mode="append")
    return START + timedelta(hours=3)


def test_a_never_compacted_day_of_many_buckets_is_compacted_in_one_commit(tmp_path):
    uri = str(tmp_path / "t")
    now = _day_of_buckets(uri, runs=90)  # 08:00-09:29: six 15-minute buckets
    table = DeltaTable(uri)
    version, before = table.version(), pl.read_delta(uri).sort("event_id")

    result = compact_open_day(table, DAY, now, 256 * 1024 * 1024)

    assert (result.compacted, result.files_before, result.files_after) == (True, 90, 6)
    assert DeltaTable(uri).version() == version + 1  # one commit for all six buckets
    assert pl.read_delta(uri).sort("event_id").equals(before)
    # Each new file holds one bucket, and its statistics prune: a window from 09:20 needs only
    # the last bucket's file (the other five deleted from disk).
    actions = pl.DataFrame(DeltaTable(uri).get_add_actions(flatten=True))
    assert actions["num_records"].to_list() == [75] * 6
    since = START + timedelta(minutes=80)
    assert delete_files_written_before(uri, "ingested_at", since) == 5
    writer = DeltaTableWriter(uri, dedupe_days=1)
    late = before.filter(pl.col("ingested_at") >= START + timedelta(minutes=89))
    assert writer.merge_new_rows(late, since=since).inserted == 0


def _commit_between_plan_and_commit(monkeypatch, concurrent) -> None:
    """The first open-day compaction planned runs `concurrent` after writing its new files and
    before committing them."""
    from itel_dagster.resources import delta_maintenance

    rewrite, calls = delta_maintenance._rewrite_buckets, []

    def rewrite_then_concurrent(*args, **kwargs):
        actions = rewrite(*args, **kwargs)
        if not calls:
            calls.append(1)
            concurrent()
        return actions

    monkeypatch.setattr(delta_maintenance, "_rewrite_buckets", rewrite_then_concurrent)


def compacted_files_on_disk(uri: str) -> set[str]:
    return {p.name for p in Path(uri).rglob("part-compacted-*.parquet")}


def test_an_open_day_compaction_that_loses_to_a_backfill_runs_again_and_resurrects_no_row(
        tmp_path, monkeypatch):
    uri = str(tmp_path / "t")
    now = _day_of_buckets(uri, runs=40)
    replacement = run_rows("event_id", "ingested_at", START + timedelta(minutes=5), n=7)
    after_backfill = []

    def backfill() -> None:  # replaces the day's files with new ones (the same rows, 7 more)
        DeltaTableWriter(uri).replace_day(replacement, (DAY.year, DAY.month, DAY.day), held={})
        after_backfill.append(pl.read_delta(uri).sort("event_id"))

    _commit_between_plan_and_commit(monkeypatch, backfill)

    result = compact_open_day(DeltaTable(uri), DAY, now, 256 * 1024 * 1024,
                              Retrying(max_retries=3, backoff_seconds=0.01))

    assert result.attempts == 2 and not result.gave_up
    # Each row once, as the backfill left the day: the first attempt's rewrite of the files the
    # backfill replaced would have put them back beside the backfill's.
    assert pl.read_delta(uri).sort("event_id").equals(after_backfill[0])
    assert after_backfill[0].height == 40 * 5 + 7
    # The lost attempt's new files were deleted; the ones on disk are the table's.
    live = {Path(p).name for p in DeltaTable(uri).file_uris()}
    assert compacted_files_on_disk(uri) <= live


def test_two_open_day_compactions_planned_on_one_snapshot_write_each_row_once(
        tmp_path, monkeypatch):
    uri = str(tmp_path / "t")
    now = _day_of_buckets(uri, runs=40)
    rows_before = pl.read_delta(uri).height
    _commit_between_plan_and_commit(
        monkeypatch, lambda: compact_open_day(DeltaTable(uri), DAY, now, 256 * 1024 * 1024))

    result = compact_open_day(DeltaTable(uri), DAY, now, 256 * 1024 * 1024,
                              Retrying(max_retries=3, backoff_seconds=0.01))

    # The second commit removes files the first already removed: refused, and on the new
    # snapshot there is nothing left to compact.
    assert result.attempts == 2 and not result.compacted
    table = pl.read_delta(uri)
    assert table.height == table["event_id"].n_unique() == rows_before
