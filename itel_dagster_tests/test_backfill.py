"""Backfills: a day partition rebuilt from Kafka, exactly, on the real broker and Delta on disk.

A backfill run is a run of the worker's asset (its day rebuild graph, not the live job) for day
partitions: what a backfill launched from the UI or `dagster job backfill -j <worker>_backfill_job`
executes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import date, datetime, timedelta, timezone

import polars as pl
import yaml
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from deltalake import DeltaTable, write_deltalake

from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.resources.delta_tables import DeltaTableWriter
from itel_dagster_tests.fixtures.record_copies import drain_a_copy_across_midnight

TRACKING = "itel_cabinet_tracking_worker"
API = "itel_cabinet_api_worker"
NOW = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)  # not in the future
# Records of one UTC day, whatever the time the test runs: yesterday from 08:00 to 20:00.
YESTERDAY_EVENING = (NOW - timedelta(days=1)).replace(hour=20)


def day_of(timestamp_ms: int) -> date:
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=timezone.utc).date()


def valid_by_day(records) -> dict[date, set[str]]:
    days: dict[date, set[str]] = {}
    for r in records:
        if r.bad_kind is None:
            days.setdefault(day_of(r.timestamp_ms), set()).add(r.event_id)
    return days


def day_rows(table: pl.DataFrame, day: date) -> pl.DataFrame:
    return table.filter((pl.col("year") == day.year) & (pl.col("month") == day.month)
                        & (pl.col("day") == day.day))


def backfill(pipeline, worker: str, *days: date):
    """One backfill run over `days`, as the daemon launches it: no run config, partition tags."""
    from itel_dagster_tests.fixtures.pipeline_fixtures import worker_definitions

    settings = pipeline.workers[worker]
    job = worker_definitions(settings).resolve_job_def(settings.backfill_job)
    keys = sorted(d.isoformat() for d in days)
    tags = {"dagster/backfill": "test"}
    if len(keys) == 1:
        return job.execute_in_process(partition_key=keys[0], tags=tags, instance=pipeline.instance,
                                      raise_on_error=False)
    tags |= {"dagster/asset_partition_range_start": keys[0],
             "dagster/asset_partition_range_end": keys[-1]}
    return job.execute_in_process(tags=tags, instance=pipeline.instance, raise_on_error=False)


def materialization_metadata(result) -> dict:
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def damage(path: str, day: date, other_day: date) -> dict[str, int]:
    """Delete 5 rows of `day`, duplicate 4 and add a stray row (a row of `other_day` relabelled)."""
    table = DeltaTable(path)
    rows = day_rows(pl.read_delta(path), day).sort("kafka_offset")
    deleted = rows["event_id"][:5].to_list()
    table.delete(f"event_id IN ({', '.join(repr(e) for e in deleted)})")
    write_deltalake(table, rows[10:14], mode="append")
    stray = day_rows(pl.read_delta(path), other_day)[:1].with_columns(
        pl.lit(day.year, pl.Int32).alias("year"), pl.lit(day.month, pl.Int32).alias("month"),
        pl.lit(day.day, pl.Int32).alias("day"))
    write_deltalake(DeltaTable(path), stray, mode="append")
    return {"deleted": 5, "duplicated": 4, "stray": 1}


def test_backfill_restores_a_damaged_day_exactly(pipeline):
    records = list(generate_records(count=400, seed=61, bad_fraction=0.05, days=3, now=NOW))
    pipeline.produce(records)
    assert all(r.success for r in pipeline.drain(TRACKING))
    expected = valid_by_day(records)
    days = sorted(expected)
    target, other = days[1], days[0]
    path = str(pipeline.delta_root / "itel_cabinet_task_tracking")
    untouched = {d: day_rows(pipeline.tracking_table(), d).sort("event_id") for d in days if d != target}
    committed = pipeline.committed(TRACKING)
    errors_before = len(pipeline.consume_all(pipeline.tracking.error_topic))
    successes_before = len(pipeline.consume_all(pipeline.tracking.success_topic))

    damage(path, target, other)
    damaged = day_rows(pipeline.tracking_table(), target)
    assert damaged.height == len(expected[target]) - 5 + 4 + 1

    result = backfill(pipeline, TRACKING, target)
    assert result.success
    table = pipeline.tracking_table()
    rebuilt = day_rows(table, target)
    assert sorted(rebuilt["event_id"]) == sorted(expected[target])  # one row per valid event
    # Rows of the other days are as they were.
    for d, before in untouched.items():
        assert day_rows(table, d).sort("event_id").equals(before)
    metadata = materialization_metadata(result)
    assert metadata["mode"] == "backfill"
    assert metadata["delta_inserted"] == len(expected[target])
    assert metadata["delta_rows_removed"] == 4 + 1  # the duplicates and the stray row
    assert metadata["delta_rows_kept"] == 0
    # A backfill neither commits offsets nor publishes results again.
    assert pipeline.committed(TRACKING) == committed
    assert len(pipeline.consume_all(pipeline.tracking.error_topic)) == errors_before
    assert len(pipeline.consume_all(pipeline.tracking.success_topic)) == successes_before


def test_backfill_reads_late_records_of_the_day_past_the_next_days_first_offset(pipeline):
    # Two batches stamped over the same two days: the second batch's records of yesterday sit
    # after the first batch's records of today in every partition.
    first = list(generate_records(count=120, seed=66, days=1.5, now=NOW))
    late = list(generate_records(count=120, seed=67, days=1.5, now=NOW))
    pipeline.produce(first)
    assert all(r.success for r in pipeline.drain(TRACKING))
    pipeline.produce(late)
    assert all(r.success for r in pipeline.drain(TRACKING))
    before = pipeline.tracking_table()
    day = sorted(valid_by_day(first + late))[0]

    result = backfill(pipeline, TRACKING, day)
    assert result.success
    after = pipeline.tracking_table()
    assert sorted(day_rows(after, day)["event_id"]) == sorted(valid_by_day(first + late)[day])
    assert sorted(after["event_id"]) == sorted(before["event_id"])
    assert materialization_metadata(result)["delta_rows_removed"] == 0


def test_backfill_of_a_day_range_in_one_run_and_of_an_empty_table(pipeline):
    records = list(generate_records(count=200, seed=62, bad_fraction=0.05, days=2, now=NOW))
    pipeline.produce(records)
    expected = valid_by_day(records)
    days = sorted(expected)
    # Nothing processed live yet: the backfill builds the days from nothing, and leaves the lag.
    result = backfill(pipeline, TRACKING, *days)
    assert result.success
    table = pipeline.tracking_table()
    for d in days:
        assert sorted(day_rows(table, d)["event_id"]) == sorted(expected[d])
    assert pipeline.lag(TRACKING) == len(records)
    # The live worker then finds every row present: still one per event.
    assert all(r.success for r in pipeline.drain(TRACKING))
    table = pipeline.tracking_table()
    assert table.height == sum(len(v) for v in expected.values()) == table["event_id"].n_unique()
    assert pipeline.lag(TRACKING) == 0


def test_backfill_keeps_rows_whose_records_retention_deleted(pipeline):
    records = list(generate_records(count=240, seed=63, days=0.5, now=YESTERDAY_EVENING))
    pipeline.produce(records)
    assert all(r.success for r in pipeline.drain(TRACKING))
    table = pipeline.tracking_table()
    [day] = {day_of(r.timestamp_ms) for r in records}
    # Retention: Kafka deletes the first 20 records of partition 0.
    admin = AdminClient({"bootstrap.servers": pipeline.bootstrap})
    topic = pipeline.tracking.input_topic
    [future] = admin.delete_records([TopicPartition(topic, 0, 20)]).values()
    future.result(30)
    expired = table.filter((pl.col("kafka_partition") == 0) & (pl.col("kafka_offset") < 20))
    assert expired.height == 20
    # Damage among the expired rows too: one of them duplicated.
    path = str(pipeline.delta_root / "itel_cabinet_task_tracking")
    write_deltalake(DeltaTable(path), expired[:1], mode="append")

    result = backfill(pipeline, TRACKING, day)
    assert result.success
    rebuilt = day_rows(pipeline.tracking_table(), day)
    assert sorted(rebuilt["event_id"]) == sorted(table["event_id"])  # nothing lost, nothing twice
    metadata = materialization_metadata(result)
    assert metadata["delta_rows_kept"] == 20
    assert metadata["delta_inserted"] == table.height - 20
    assert "no longer holds" in metadata["kept_rows_reason"]
    assert "0: 20" in metadata["kept_rows_reason"]


BACKFILL_PROCESS = """
import sys
import dagster as dg
from itel_dagster.definitions import defs

job = defs.resolve_job_def("itel_cabinet_tracking_backfill_job")
keys = sys.argv[1:]
tags = {"dagster/backfill": "concurrent", "dagster/asset_partition_range_start": keys[0],
        "dagster/asset_partition_range_end": keys[-1]}
for _ in range(3):
    with dg.DagsterInstance.ephemeral() as instance:
        assert job.execute_in_process(tags=tags, instance=instance).success
"""


def test_backfill_and_live_runs_on_the_same_day_do_not_corrupt_each_other(pipeline):
    records = list(generate_records(count=600, seed=64, days=0.5, now=NOW))
    pipeline.produce(records)
    path = str(pipeline.delta_root / "itel_cabinet_task_tracking")
    days = sorted(valid_by_day(records))
    # Small live runs, so many Delta commits interleave with the backfills' replaces.
    workers_file = pipeline.root / "config/plugins/itel_cabinet_api/workers.yaml"
    data = yaml.safe_load(workers_file.read_text())
    data["workers"][TRACKING].update(batch_size=20, max_records_per_run=40)
    workers_file.write_text(yaml.safe_dump(data, sort_keys=False))
    # The backfill runs in its own process, as the run launcher starts it, on the same days.
    backfills = subprocess.Popen([sys.executable, "-c", BACKFILL_PROCESS,
                                  *(d.isoformat() for d in days)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert all(r.success for r in pipeline.drain(TRACKING))
    output, _ = backfills.communicate(timeout=600)
    assert backfills.returncode == 0, output.decode()[-3000:]
    table = pl.read_delta(path)
    assert table.height == len(records) == table["event_id"].n_unique()
    assert set(table["event_id"]) == {r.event_id for r in records}


def test_backfill_leaves_out_a_copy_redelivered_across_midnight(pipeline):
    first = drain_a_copy_across_midnight(pipeline, TRACKING, seed=66)
    day = day_of(first.timestamp_ms)
    result = backfill(pipeline, TRACKING, day + timedelta(days=1))  # the day the copy landed in
    assert result.success
    assert materialization_metadata(result)["delta_rows_in_earlier_days"] == 1
    assert pipeline.tracking_table()["event_id"].to_list() == [first.event_id]
    assert backfill(pipeline, TRACKING, day, day + timedelta(days=1)).success  # both in one run
    table = pipeline.tracking_table()
    assert table["event_id"].to_list() == [first.event_id]
    assert table.select("year", "month", "day").row(0) == (day.year, day.month, day.day)


def test_a_concurrent_commit_makes_the_replace_run_again_on_the_new_snapshot(tmp_path):
    uri = str(tmp_path / "table")
    day = (2026, 11, 5)

    def rows(ids, offsets):
        return pl.DataFrame({"event_id": ids, "kafka_partition": [0] * len(ids),
                             "kafka_offset": offsets, "year": [2026] * len(ids),
                             "month": [11] * len(ids), "day": [5] * len(ids)},
                            schema_overrides={"kafka_partition": pl.Int32, "year": pl.Int32,
                                              "month": pl.Int32, "day": pl.Int32})

    live = DeltaTableWriter(uri)
    live.merge_new_rows(rows(["a", "b"], [0, 1]))

    class RacedWriter(DeltaTableWriter):
        raced = False

        def _day_rows(self, table, year, month, day_):
            found = super()._day_rows(table, year, month, day_)
            if not self.raced:  # a live run commits a newer record between read and commit
                self.raced = True
                live.merge_new_rows(rows(["c"], [2]))
            return found

    result = RacedWriter(uri).replace_day(rows(["a", "b"], [0, 1]), day, held={0: (0, 2)})
    assert result.attempts == 2
    assert result.kept == 1  # c arrived after the backfill's read (offset 2 >= high 2)
    assert sorted(pl.read_delta(uri)["event_id"]) == ["a", "b", "c"]


def test_api_backfill_sends_only_events_without_an_accepted_send(pipeline, itel_simulator):
    # Live: a contract that leaves project_id null for unknown assignments, so iTel rejects them.
    pipeline.set_itel(payload={
        "task_id": "event.task_id", "assignment_id": "event.assignment_id",
        "project_id": "claimx.project_id", "task_status": "event.task_status",
        "repair_details": {"cabinet_id": "claimx.custom_fields.cabinet_id",
                           "technician_notes": "claimx.notes"},
        "source_system": "=claimx"})
    records = list(generate_records(count=80, seed=65, days=1, unknown_fraction=0.3, now=NOW))
    pipeline.produce(records)
    assert all(r.success for r in pipeline.drain(API))
    rejected = {r.event_id for r in records if json.loads(r.value)["assignment_id"] >= 9_000_000}
    assert rejected
    ledger = pipeline.sends_table()
    assert set(ledger.filter(pl.col("outcome") == "rejected")["event_id"]) == rejected

    # The contract is fixed; reconcile every day of the events.
    path = pipeline.root / "config/plugins/shared/connections/app.itel.yaml"
    data = yaml.safe_load(path.read_text())
    data["itel_cabinet_api"].pop("payload")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    itel_simulator.clear_stats()
    days = sorted({day_of(r.timestamp_ms) for r in records})
    result = backfill(pipeline, API, *days)
    assert result.success
    # Only the rejected events were sent again, each once; the accepted ones not at all.
    assert itel_simulator.stats()["total"] == len(rejected)
    ledger = pipeline.sends_table()
    accepted = ledger.filter(pl.col("outcome") == "accepted")
    assert sorted(accepted["event_id"]) == sorted(r.event_id for r in records)
    assert Counter(r["idempotency_key"] for r in itel_simulator.accepted_requests()) == \
        Counter({r.event_id: 1 for r in records})
    # A second reconciliation finds nothing to send.
    itel_simulator.clear_stats()
    assert backfill(pipeline, API, *days).success
    assert itel_simulator.stats()["total"] == 0
