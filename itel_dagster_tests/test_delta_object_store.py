"""Delta on object storage, end to end against a real emulator: Azurite (npm, installed by
scripts/ensure_azurite.sh) with ITEL_DELTA_ROOT=az://<container>/delta and the storage options
from connections/delta.yaml (${VAR}) or ITEL_DELTA_STORAGE_OPTIONS. Real broker and simulators.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import date, datetime, timedelta, timezone

import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake

from itel_dagster.devstack.azurite import ACCOUNT, ACCOUNT_KEY, AzuriteUnavailable, LocalAzurite
from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.resources.delta_maintenance import day_file_count
from itel_dagster.resources.delta_tables import PARTITION_COLUMNS, DeltaTablesResource
from itel_dagster.settings.paths import DELTA_FILE, delta_storage_options
from itel_dagster_tests.test_asset_checks import COMPLETE, UNIQUE, day_facts, run_checks
from itel_dagster_tests.test_backfill import backfill
from itel_dagster_tests.test_query import query_json

pytestmark = pytest.mark.slow

TRACKING = "itel_cabinet_tracking_worker"
API = "itel_cabinet_api_worker"
TRACKING_TABLE, LEDGER_TABLE = "itel_cabinet_task_tracking", "itel_api_sends"
NOW = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
YESTERDAY_EVENING = (NOW - timedelta(days=1)).replace(hour=20)  # records of one UTC day
# connections/delta.yaml as a deployment writes it, every value from the environment; names
# delta-rs does not read itself (it reads AZURE_STORAGE_*), so only this file can connect.
DELTA_YAML = """storage_options:
  azure_storage_account_name: ${ITEL_TEST_AZURE_ACCOUNT}
  azure_storage_account_key: ${ITEL_TEST_AZURE_KEY}
  azure_storage_endpoint: ${ITEL_TEST_AZURE_ENDPOINT:-}
  allow_http: ${ITEL_TEST_AZURE_ALLOW_HTTP:-false}
"""


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    emulator = LocalAzurite(tmp_path_factory.mktemp("azurite"))
    try:
        emulator.start()
    except AzuriteUnavailable as exc:
        pytest.skip(f"Azure Storage emulator cannot start here: {exc}")
    yield emulator
    emulator.stop()


def new_root(azurite: LocalAzurite) -> str:
    container = f"itel-{uuid.uuid4().hex[:12]}"
    azurite.create_container(container)
    return f"az://{container}/delta"


@pytest.fixture
def object_store_pipeline(pipeline, azurite, monkeypatch):
    """The `pipeline` fixture with its Delta root in a fresh container, configured through the
    test's delta.yaml and environment variables only."""
    (pipeline.root / "config" / DELTA_FILE).write_text(DELTA_YAML)
    monkeypatch.setenv("ITEL_TEST_AZURE_ACCOUNT", ACCOUNT)
    monkeypatch.setenv("ITEL_TEST_AZURE_KEY", ACCOUNT_KEY)
    monkeypatch.setenv("ITEL_TEST_AZURE_ENDPOINT", azurite.endpoint)
    monkeypatch.setenv("ITEL_TEST_AZURE_ALLOW_HTTP", "true")
    monkeypatch.setenv("ITEL_DELTA_ROOT", new_root(azurite))
    return pipeline


def table(name: str) -> pl.DataFrame:
    return DeltaTablesResource().read(name)


def on_day(rows: pl.DataFrame, day: date) -> pl.DataFrame:
    return rows.filter((pl.col("year") == day.year) & (pl.col("month") == day.month)
                       & (pl.col("day") == day.day))


def valid_ids(records) -> set[str]:
    return {r.event_id for r in records if r.bad_kind is None}


def drain_both(pipeline, seed: int, bad_fraction: float) -> list:
    """60 records of one UTC day through both workers; returns them."""
    records = list(generate_records(count=60, seed=seed, bad_fraction=bad_fraction, days=0.5,
                                    now=YESTERDAY_EVENING))
    pipeline.produce(records)
    assert all(r.success for r in pipeline.drain(TRACKING))
    assert all(r.success for r in pipeline.drain(API))
    return records


def test_both_workers_write_to_azurite_and_a_redelivered_record_adds_no_row(
        object_store_pipeline, itel_simulator):
    pipeline = object_store_pipeline
    records = drain_both(pipeline, seed=181, bad_fraction=0.1)

    valid = valid_ids(records)
    tracking, ledger = table(TRACKING_TABLE), table(LEDGER_TABLE)
    assert sorted(tracking["event_id"]) == sorted(valid)
    assert sorted(ledger.filter(pl.col("outcome") == "accepted")["event_id"]) == sorted(valid)
    assert pipeline.lag(TRACKING) == pipeline.lag(API) == 0
    assert not pipeline.delta_root.exists()  # nothing went to the local disk
    successes = [json.loads(m.value()) for m in pipeline.consume_all(pipeline.tracking.success_topic)]
    assert {s["delta_table"] for s in successes} == {DeltaTablesResource().table_uri(TRACKING_TABLE)}
    # itel-dagster query reads the same root with the same options.
    counted = query_json(os.environ["ITEL_DELTA_ROOT"], "--sql",
                         "SELECT COUNT(*) AS n FROM tracking")
    assert counted == [{"n": len(valid)}]

    # The same records delivered again (a producer retry): the MERGEs insert nothing, iTel gets
    # nothing more.
    pipeline.produce(records[:20])
    assert all(r.success for r in pipeline.drain(TRACKING))
    assert all(r.success for r in pipeline.drain(API))
    assert table(TRACKING_TABLE).height == len(valid)
    assert table(LEDGER_TABLE).height == ledger.height
    assert len(itel_simulator.accepted_requests()) == len(valid)


def test_asset_checks_and_a_day_rebuild_on_azurite(object_store_pipeline):
    pipeline = object_store_pipeline
    records = drain_both(pipeline, seed=182, bad_fraction=0.05)
    [day] = sorted({datetime.fromtimestamp(r.timestamp_ms / 1000, tz=timezone.utc).date()
                    for r in records})
    checks = run_checks(pipeline, [day])
    assert all(e.passed for e in checks.values()), {n: e.description for n, e in checks.items()}
    assert day_facts(checks[COMPLETE], day)["in_table"] == len(valid_ids(records))

    # Damage the day on the emulator: 3 rows deleted, 2 duplicated.
    uri = DeltaTablesResource().table_uri(TRACKING_TABLE)
    rows = on_day(table(TRACKING_TABLE), day).sort("kafka_offset")
    deleted = rows["event_id"][:3].to_list()
    options = delta_storage_options()
    DeltaTable(uri, storage_options=options).delete(
        f"event_id IN ({', '.join(repr(e) for e in deleted)})")
    write_deltalake(DeltaTable(uri, storage_options=options), rows[5:7], mode="append")
    checks = run_checks(pipeline, [day])
    assert not checks[COMPLETE].passed and day_facts(checks[COMPLETE], day)["missing"] == 3
    assert not checks[UNIQUE].passed and day_facts(checks[UNIQUE], day)["duplicate_rows"] == 2

    result = backfill(pipeline, TRACKING, day)
    assert result.success
    assert sorted(on_day(table(TRACKING_TABLE), day)["event_id"]) == sorted(valid_ids(records))
    checks = run_checks(pipeline, [day])
    assert checks[COMPLETE].passed and checks[UNIQUE].passed


def four_small_files(uri: str, day: date, options: dict[str, str]) -> None:
    """Four one-commit appends of 3 rows (e0-0 .. e3-2) to one day, as live runs leave them."""
    for n in range(4):
        rows = pl.DataFrame({"event_id": [f"e{n}-{i}" for i in range(3)]}).with_columns(
            pl.lit(day.year, pl.Int32).alias("year"), pl.lit(day.month, pl.Int32).alias("month"),
            pl.lit(day.day, pl.Int32).alias("day"))
        write_deltalake(uri, rows, partition_by=PARTITION_COLUMNS, mode="append",
                        storage_options=options)


def test_the_compaction_job_compacts_a_day_on_azurite(azurite, monkeypatch):
    from itel_dagster.jobs.delta_maintenance import delta_compaction_job

    monkeypatch.setenv("ITEL_DELTA_STORAGE_OPTIONS", json.dumps(azurite.storage_options()))
    delta = DeltaTablesResource(root=new_root(azurite))
    uri, day = delta.table_uri(LEDGER_TABLE), date(2026, 11, 5)
    four_small_files(uri, day, azurite.storage_options())
    assert day_file_count(DeltaTable(uri, storage_options=azurite.storage_options()), day) == 4

    result = delta_compaction_job.execute_in_process(
        run_config={"ops": {"compact_day_partition": {
            "config": {"table": LEDGER_TABLE, "day": day.isoformat()}}}},
        resources={"delta": delta})
    assert result.success
    compacted = DeltaTable(uri, storage_options=azurite.storage_options())
    assert day_file_count(compacted, day) == 1
    assert delta.read(LEDGER_TABLE).height == 12


def test_the_compaction_job_compacts_an_open_day_in_one_commit_on_azurite(azurite, monkeypatch):
    # Today's partition: compacted by 15-minute buckets of write time, its new files written
    # through the table's object store (the job passes the storage options).
    from itel_dagster.jobs.delta_maintenance import delta_compaction_job

    monkeypatch.setenv("ITEL_DELTA_STORAGE_OPTIONS", json.dumps(azurite.storage_options()))
    delta, options = DeltaTablesResource(root=new_root(azurite)), azurite.storage_options()
    uri, now = delta.table_uri(TRACKING_TABLE), datetime.now(timezone.utc)
    start = (now - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    for n in range(6):  # three runs in each of two buckets
        rows = pl.DataFrame({"event_id": [f"e{n}-{i}" for i in range(3)],
                             "ingested_at": [start + timedelta(minutes=5 * n)] * 3}).with_columns(
            pl.lit(now.year, pl.Int32).alias("year"), pl.lit(now.month, pl.Int32).alias("month"),
            pl.lit(now.day, pl.Int32).alias("day"))
        write_deltalake(uri, rows, partition_by=PARTITION_COLUMNS, mode="append",
                        storage_options=options)
    version = DeltaTable(uri, storage_options=options).version()

    result = delta_compaction_job.execute_in_process(
        run_config={"ops": {"compact_day_partition": {
            "config": {"table": TRACKING_TABLE, "day": now.date().isoformat()}}}},
        resources={"delta": delta})

    assert result.success
    compacted = DeltaTable(uri, storage_options=options)
    assert (day_file_count(compacted, now.date()), compacted.version()) == (2, version + 1)
    assert sorted(delta.read(TRACKING_TABLE)["event_id"]) == sorted(
        f"e{n}-{i}" for n in range(6) for i in range(3))


def test_two_writers_from_one_snapshot_both_commit_and_nothing_is_overwritten(azurite):
    # Azure's create-if-absent (If-None-Match: *) refuses the second commit of version 1; the
    # writer reloads and commits version 2. A store without it would lose a row silently.
    uri, options = f"{new_root(azurite)}/t", azurite.storage_options()
    write_deltalake(uri, pl.DataFrame({"n": [0]}), storage_options=options)
    first, second = (DeltaTable(uri, storage_options=options) for _ in range(2))
    write_deltalake(first, pl.DataFrame({"n": [1]}), mode="append")
    write_deltalake(second, pl.DataFrame({"n": [2]}), mode="append")
    assert DeltaTable(uri, storage_options=options).version() == 2
    assert sorted(pl.read_delta(uri, storage_options=options)["n"]) == [0, 1, 2]


def test_the_checkpoint_and_full_vacuum_jobs_run_on_azurite(azurite, monkeypatch):
    # The vacuum lists the container (delta-rs full vacuum): on the object store it keeps the
    # files a compaction just removed (written minutes ago) and every row; the checkpoint job
    # writes the tombstone retention into the table.
    from itel_dagster.jobs.delta_maintenance import (
        MAINTENANCE,
        delta_checkpoint_job,
        delta_compaction_job,
        delta_vacuum_job,
    )

    monkeypatch.setenv("ITEL_DELTA_STORAGE_OPTIONS", json.dumps(azurite.storage_options()))
    delta, options = DeltaTablesResource(root=new_root(azurite)), azurite.storage_options()
    uri, day = delta.table_uri(LEDGER_TABLE), date(2026, 11, 5)
    four_small_files(uri, day, options)
    assert delta_compaction_job.execute_in_process(
        run_config={"ops": {"compact_day_partition": {
            "config": {"table": LEDGER_TABLE, "day": day.isoformat()}}}},
        resources={"delta": delta}).success

    assert delta_checkpoint_job.execute_in_process(resources={"delta": delta}).success
    table = DeltaTable(uri, storage_options=options)
    assert table.metadata().configuration["delta.deletedFileRetentionDuration"] == \
        f"interval {MAINTENANCE.tombstone_retention_hours} hours"
    removed = table.vacuum(0, dry_run=True, enforce_retention_duration=False)
    assert len(removed) == 4  # the compaction's tombstones, still within their 2 hours

    result = delta_vacuum_job.execute_in_process(resources={"delta": delta})

    assert result.success
    # Still in the container: a full listing at retention 0 finds exactly those 4 files.
    table = DeltaTable(uri, storage_options=options)
    still_there = table.vacuum(0, dry_run=True, enforce_retention_duration=False, full=True)
    assert sorted(still_there) == sorted(removed)
    assert sorted(delta.read(LEDGER_TABLE)["event_id"]) == sorted(
        f"e{n}-{i}" for n in range(4) for i in range(3))
