"""Delta table maintenance on real Delta tables on disk (no broker): compaction of a day,
commits lost to concurrent writers retried by the side that lost, the compaction sensor's
requests, vacuum and log cleanup, and the retention floor."""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake

from itel_dagster.jobs.delta_maintenance import (
    MAINTENANCE,
    TABLE_TAG,
    compaction_requests,
    delta_compaction_job,
    delta_checkpoint_job,
    delta_compaction_sensor,
    delta_vacuum_job,
)
from itel_dagster.resources.delta_maintenance import (
    Retrying,
    checkpoint,
    compact_day,
    day_file_count,
    set_retention_properties,
    tombstone_count,
    vacuum_and_clean_log,
)
from itel_dagster.resources.delta_tables import (
    PARTITION_COLUMNS,
    DeltaTablesResource,
    DeltaTableWriter,
)
from itel_dagster.settings.env_yaml import ConfigError
from itel_dagster.settings.maintenance import MAINTENANCE_FILE, check_retention, load_maintenance
from itel_dagster.settings.paths import PROJECT_ROOT
from itel_dagster.settings.workers import load_workers

DAY = date(2026, 11, 5)
OTHER_DAY = date(2026, 11, 4)
NO_WAIT = Retrying(max_retries=5, backoff_seconds=0.01)


def rows(count: int, day: date = DAY) -> pl.DataFrame:
    return pl.DataFrame({
        "event_id": [uuid.uuid4().hex for _ in range(count)],
        "year": [day.year] * count, "month": [day.month] * count, "day": [day.day] * count,
    }, schema_overrides={"year": pl.Int32, "month": pl.Int32, "day": pl.Int32})


def small_files(uri: str, files: int, day: date = DAY, per_file: int = 3) -> None:
    """One commit and one Parquet file per append, as a live run leaves them."""
    for _ in range(files):
        write_deltalake(uri, rows(per_file, day), partition_by=PARTITION_COLUMNS, mode="append")


def data_files(uri: str) -> list[Path]:
    return [p for p in Path(uri).rglob("*.parquet") if "_delta_log" not in p.parts]


def event_ids(uri: str) -> list[str]:
    return sorted(pl.read_delta(uri)["event_id"].to_list())


def test_compaction_leaves_the_day_in_one_file_with_the_same_rows_and_other_days_alone(tmp_path):
    uri = str(tmp_path / "t")
    small_files(uri, 12)
    small_files(uri, 4, OTHER_DAY)
    before = event_ids(uri)

    result = compact_day(DeltaTable(uri), DAY, target_size=64 * 1024 * 1024, retrying=NO_WAIT)

    assert (result.files_before, result.files_after, result.compacted) == (12, 1, True)
    table = DeltaTable(uri)
    assert day_file_count(table, DAY) == 1 and day_file_count(table, OTHER_DAY) == 4
    assert event_ids(uri) == before
    # A day already in one file is left as it is.
    again = compact_day(table, DAY, target_size=64 * 1024 * 1024, retrying=NO_WAIT)
    assert (again.compacted, again.gave_up, again.files_after) == (False, False, 1)


def test_a_compaction_that_loses_to_a_concurrent_commit_runs_again_on_a_new_snapshot(tmp_path):
    uri = str(tmp_path / "t")
    small_files(uri, 6)
    planned = DeltaTable(uri)  # the compaction's snapshot, taken before the other commit
    # A backfill replaces the day meanwhile: it deletes files the compaction would rewrite, and
    # delta-rs refuses the compaction's commit (CommitFailedError).
    replacement = rows(5)
    DeltaTableWriter(uri).replace_day(replacement, (DAY.year, DAY.month, DAY.day), held={})
    small_files(uri, 3)  # and live runs append on the new snapshot
    before = event_ids(uri)

    result = compact_day(planned, DAY, target_size=64 * 1024 * 1024, retrying=NO_WAIT)

    assert result.attempts == 2 and result.compacted and not result.gave_up
    assert result.files_after == 1
    assert event_ids(uri) == before  # every commit's rows, the backfill's and the live ones
    assert set(replacement["event_id"]) <= set(before)

    # Without retries it gives up for this turn: no exception into the run, the table untouched.
    small_files(uri, 3)
    stale = DeltaTable(uri)
    small_files(uri, 1)
    DeltaTableWriter(uri).replace_day(rows(2), (DAY.year, DAY.month, DAY.day), held={})
    gave_up = compact_day(stale, DAY, 64 * 1024 * 1024, Retrying(max_retries=0))
    assert (gave_up.gave_up, gave_up.compacted, gave_up.attempts) == (True, False, 1)


class CountingWriter(DeltaTableWriter):
    """The live writer, counting the snapshots it loads afresh: one, plus one per lost commit."""

    fresh_loads = 0

    def _load(self):
        if self._table is None:
            self.fresh_loads += 1
        return super()._load()


def test_live_merges_during_compactions_never_fail_and_write_each_event_once(tmp_path):
    uri = str(tmp_path / "t")
    small_files(uri, 30)
    live = CountingWriter(uri, dedupe_days=1)
    written, errors, stop = [], [], threading.Event()

    def live_runs():
        try:
            while not stop.is_set():
                batch = rows(4)
                live.merge_new_rows(batch)
                written.extend(batch["event_id"].to_list())
        except Exception as exc:  # noqa: BLE001 - the assertion below reports it
            errors.append(exc)

    worker = threading.Thread(target=live_runs)
    worker.start()
    compactions = []
    try:
        deadline = datetime.now() + timedelta(seconds=8)
        while datetime.now() < deadline and (len(compactions) < 3 or len(written) < 40):
            small_files(uri, 5)
            compactions.append(compact_day(DeltaTable(uri), DAY, 64 * 1024 * 1024, NO_WAIT))
    finally:
        stop.set()
        worker.join(timeout=60)

    assert not errors, errors
    assert any(c.compacted for c in compactions)
    # The live write is a key check and an append: a compaction only rewrites rows, so it never
    # makes a live commit fail (a MERGE that read the files it replaced lost its commit).
    assert live.fresh_loads == 1, "a live write lost its commit to a compaction"
    table = pl.read_delta(uri)
    assert set(written) <= set(table["event_id"])
    assert table["event_id"].n_unique() == table.height  # each event once
    operations = [entry["operation"] for entry in DeltaTable(uri).history()]
    assert "OPTIMIZE" in operations and "WRITE" in operations


def test_the_sensor_asks_for_today_past_the_threshold_and_each_closed_day_once(tmp_path):
    uri = str(tmp_path / "t")
    now = datetime(2026, 11, 5, 0, 30, tzinfo=timezone.utc)
    two_days_back = DAY - timedelta(days=2)
    small_files(uri, 4, DAY)
    small_files(uri, 2, OTHER_DAY)
    small_files(uri, 1, two_days_back)
    settings = MAINTENANCE.model_copy(update={"compact_min_files": 3, "closed_day_delay_hours": 1,
                                              "closed_day_lookback_days": 2})

    # Half an hour after midnight: yesterday is not closed yet (closed_day_delay_hours 1), and
    # the closed day two days back holds one file: nothing to bin-pack, no run.
    early = compaction_requests("t", DeltaTable(uri), now, settings)
    assert [(r.run_key, r.tags["itel/delta_table"]) for r in early] == [(f"t:{DAY}:v6", "t")]
    assert early[0].run_config["ops"]["compact_day_partition"]["config"] == {
        "table": "t", "day": DAY.isoformat()}

    # An hour after midnight the day before is closed: one request, under a key that never
    # changes (Dagster launches a run_key once), with today's still keyed by the table version;
    # the day two days back is asked for once it holds a second file.
    small_files(uri, 1, two_days_back)
    later = compaction_requests("t", DeltaTable(uri), now + timedelta(hours=1), settings)
    assert sorted(r.run_key for r in later) == sorted(
        [f"t:{OTHER_DAY}:closed", f"t:{two_days_back}:closed", f"t:{DAY}:v7"])
    small_files(uri, 1)
    again = compaction_requests("t", DeltaTable(uri), now + timedelta(hours=2), settings)
    assert f"t:{OTHER_DAY}:closed" in {r.run_key for r in again}
    assert f"t:{DAY}:v8" in {r.run_key for r in again}
    quiet = settings.model_copy(update={"compact_min_files": 10, "closed_day_lookback_days": 1})
    assert compaction_requests("t", DeltaTable(uri), now, quiet) == []


def test_closed_days_of_a_missing_table_or_of_one_file_ask_for_nothing(tmp_path):
    """A fresh deployment: no table yet, or days of one file, start no compaction run."""
    now = datetime(2026, 11, 5, 12, 0, tzinfo=timezone.utc)
    assert compaction_requests("t", None, now) == []
    uri = str(tmp_path / "t")
    for back in range(1, MAINTENANCE.closed_day_lookback_days + 1):
        small_files(uri, 1, DAY - timedelta(days=back))
    assert compaction_requests("t", DeltaTable(uri), now) == []


def test_the_compaction_job_and_sensor_run_in_dagster_on_the_resource_root(tmp_path):
    delta = DeltaTablesResource(root=str(tmp_path))
    small_files(delta.table_uri("itel_api_sends"), 5)
    result = delta_compaction_job.execute_in_process(
        run_config={"ops": {"compact_day_partition": {
            "config": {"table": "itel_api_sends", "day": DAY.isoformat()}}}},
        resources={"delta": delta})
    assert result.success
    assert day_file_count(DeltaTable(delta.table_uri("itel_api_sends")), DAY) == 1
    (materialized,) = [e for e in result.events_for_node("compact_day_partition")
                       if e.event_type_value == "STEP_OUTPUT"]
    metadata = materialized.step_output_data.metadata
    assert (metadata["files_before"].value, metadata["files_after"].value) == (5, 1)

    closed = (datetime.now(timezone.utc) - timedelta(days=2)).date()  # closed, in the lookback
    for name in ("itel_cabinet_task_tracking", "itel_api_sends", "itel_cabinet_trigger_forwards"):
        small_files(delta.table_uri(name), 2, closed)
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"delta": delta})
        tables = {r.tags[TABLE_TAG] for r in delta_compaction_sensor(context)}
        # Every worker's table (the trigger's forward ledger too): their closed days.
        assert tables == {"itel_cabinet_task_tracking", "itel_api_sends",
                          "itel_cabinet_trigger_forwards"}
        # A table whose compaction is still queued or running gets no second one meanwhile.
        instance.create_run_for_job(delta_compaction_job, tags={TABLE_TAG: "itel_api_sends"},
                                    run_config={"ops": {"compact_day_partition": {"config": {
                                        "table": "itel_api_sends", "day": DAY.isoformat()}}}})
        requests = delta_compaction_sensor(context)
        assert {r.tags[TABLE_TAG] for r in requests} == {"itel_cabinet_task_tracking",
                                                          "itel_cabinet_trigger_forwards"}


def tombstones(uri: str) -> int:
    return tombstone_count(DeltaTable(uri))


def written_days_ago(paths, days: float) -> None:
    when = time.time() - days * 86_400
    for path in paths:
        os.utime(path, (when, when))


def test_vacuum_deletes_removed_files_past_retention_and_cleans_the_log(tmp_path):
    uri = str(tmp_path / "t")
    small_files(uri, 8)
    compact_day(DeltaTable(uri), DAY, 64 * 1024 * 1024, NO_WAIT)
    parquet_before = len(data_files(uri))
    log_before = len(list((Path(uri) / "_delta_log").glob("*.json")))
    ids = event_ids(uri)

    outcome = vacuum_and_clean_log(DeltaTable(uri), vacuum_hours=0, tombstone_hours=0,
                                   log_hours=0, retrying=NO_WAIT)

    assert outcome["files_deleted"] == 8 and outcome["properties_set"] is True
    assert len(data_files(uri)) == parquet_before - 8
    assert len(list((Path(uri) / "_delta_log").glob("*.json"))) < log_before
    assert event_ids(uri) == ids
    config = DeltaTable(uri).metadata().configuration
    assert config["delta.deletedFileRetentionDuration"] == "interval 0 hours"

    # The job keeps the configured 7 days: the compaction's removed files stay.
    small_files(uri, 3)
    compact_day(DeltaTable(uri), DAY, 64 * 1024 * 1024, NO_WAIT)
    on_disk = len(data_files(uri))
    assert delta_vacuum_job.execute_in_process(
        resources={"delta": DeltaTablesResource(root=str(tmp_path))}).success
    assert len(data_files(uri)) == on_disk


def test_expired_tombstones_leave_the_checkpoint_and_the_vacuum_still_keeps_young_files(tmp_path):
    """Runs load every tombstone of the checkpoint, so a checkpoint leaves out those past
    tombstone_retention_hours; the full vacuum then finds removed files by listing, and deletes
    only files written more than vacuum_retention_hours ago that nothing references."""
    uri = str(tmp_path / "t")
    small_files(uri, 6)
    small_files(uri, 4, day=OTHER_DAY)
    old_day_files = [p for p in data_files(uri) if f"day={OTHER_DAY.day}" in str(p)]
    written_days_ago(old_day_files, 10)  # a backfill of an old day removes files this old
    compact_day(DeltaTable(uri), DAY, 64 * 1024 * 1024, NO_WAIT)
    compact_day(DeltaTable(uri), OTHER_DAY, 64 * 1024 * 1024, NO_WAIT)
    assert tombstones(uri) == 10
    ids = event_ids(uri)

    # Tombstones within the retention stay in the checkpoint, and the vacuum keeps their files.
    assert set_retention_properties(DeltaTable(uri), 2, 168, NO_WAIT) is True
    checkpoint(DeltaTable(uri))
    assert tombstones(uri) == 10
    vacuum_and_clean_log(DeltaTable(uri), vacuum_hours=168, tombstone_hours=2, log_hours=168,
                         retrying=NO_WAIT)
    assert all(p.exists() for p in old_day_files)

    # Past the tombstone retention (0 h here), the checkpoint leaves them out...
    set_retention_properties(DeltaTable(uri), 0, 168, NO_WAIT)
    checkpoint(DeltaTable(uri))
    assert tombstones(uri) == 0
    day_dir = Path(uri) / f"year={DAY.year}" / f"month={DAY.month}" / f"day={DAY.day}"
    orphan_old, orphan_new = day_dir / "part-orphan-old.parquet", day_dir / "part-orphan-new.parquet"
    rows(2).write_parquet(orphan_old)
    rows(2).write_parquet(orphan_new)  # a run still writing it
    written_days_ago([orphan_old], 10)
    active = [Path(u.removeprefix("file://")) for u in DeltaTable(uri).file_uris()]
    written_days_ago(active, 10)  # referenced files are never deleted, however old

    outcome = vacuum_and_clean_log(DeltaTable(uri), vacuum_hours=168, tombstone_hours=0,
                                   log_hours=168, retrying=NO_WAIT)

    # ...and the vacuum deletes the 10-day-old removed files and the never-committed old file,
    # but keeps the removed files written today and the file a run is still writing.
    assert outcome["files_deleted"] == 5
    assert not any(p.exists() for p in old_day_files) and not orphan_old.exists()
    assert orphan_new.exists() and all(p.exists() for p in active)
    assert len(data_files(uri)) == 6 + len(active) + 1
    assert event_ids(uri) == ids


def test_the_checkpoint_job_writes_the_tombstone_retention_into_the_tables(tmp_path):
    uri = str(tmp_path / "itel_cabinet_task_tracking")
    small_files(uri, 3)
    assert delta_checkpoint_job.execute_in_process(
        resources={"delta": DeltaTablesResource(root=str(tmp_path))}).success
    config = DeltaTable(uri).metadata().configuration
    assert config["delta.deletedFileRetentionDuration"] == \
        f"interval {MAINTENANCE.tombstone_retention_hours} hours"
    assert (Path(uri) / "_delta_log" / "00000000000000000003.checkpoint.parquet").exists()


def test_a_retention_below_what_readers_need_is_refused_at_load(tmp_path, monkeypatch):
    workers = load_workers()
    assert MAINTENANCE.vacuum_retention_hours >= 168 and MAINTENANCE.log_retention_hours >= 168
    # dedupe_days 1: a dedupe window reads the record's day and the one before, 48 h.
    check_retention(MAINTENANCE.model_copy(update={"vacuum_retention_hours": 48}), workers)
    with pytest.raises(ConfigError, match="vacuum_retention_hours' is 47 h, below the 48 h"):
        check_retention(MAINTENANCE.model_copy(update={"vacuum_retention_hours": 47}), workers)
    with pytest.raises(ConfigError, match="log_retention_hours.*below the 200 h"):
        check_retention(MAINTENANCE.model_copy(update={"reader_history_hours": 200,
                                                       "vacuum_retention_hours": 200,
                                                       "log_retention_hours": 199}), workers)

    config = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", config)
    path = config / MAINTENANCE_FILE
    path.write_text(path.read_text().replace("vacuum_retention_hours: 168",
                                             "vacuum_retention_hours: 24"))
    monkeypatch.setenv("ITEL_CONFIG_DIR", str(config))
    with pytest.raises(ConfigError, match="delta_maintenance.vacuum_retention_hours"):
        load_maintenance()


def test_a_tombstone_retention_shorter_than_a_run_is_refused(tmp_path, monkeypatch):
    workers = load_workers()
    assert MAINTENANCE.tombstone_retention_hours >= 1
    check_retention(MAINTENANCE.model_copy(update={"tombstone_retention_hours": 1}), workers)
    longer_runs = {name: w.model_copy(update={"max_runtime_seconds": 3 * 3600 + 1})
                   for name, w in workers.items()}
    with pytest.raises(ConfigError, match="tombstone_retention_hours' is 2 h, below the 4 h"):
        check_retention(MAINTENANCE.model_copy(update={"tombstone_retention_hours": 2}),
                        longer_runs)
    with pytest.raises(ConfigError, match="tombstone_retention_hours' is 2 h, below the 24 h"):
        check_retention(MAINTENANCE.model_copy(update={"reader_history_hours": 24,
                                                       "tombstone_retention_hours": 2}), workers)
