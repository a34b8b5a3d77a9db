"""Both workers' Delta dedupe reads only the rows written within the dedupe window (real broker,
simulators, Delta on disk): a file of the day written 3 hours before the records is deleted from
disk, and the runs still succeed, while a copy of a record read earlier is neither written nor
sent twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
from deltalake import DeltaTable, write_deltalake

from itel_dagster.devstack.publisher.events import generate_records

TRACKING = "itel_cabinet_tracking_worker"
API = "itel_cabinet_api_worker"


def plant_unreadable_old_file(uri: str, written: str, key: str) -> None:
    """A copy of the table's rows under new keys, written 3 h ago, in the same day partition;
    then its Parquet is deleted from disk, so any read of that file fails."""
    table = DeltaTable(uri)
    rows = pl.from_arrow(table.to_pyarrow_table())
    old = rows.with_columns(pl.format("old-{}", key).alias(key),
                            (pl.col(written) - timedelta(hours=3)).alias(written))
    before = set(table.file_uris())
    write_deltalake(table, old.to_arrow().cast(table.to_pyarrow_table().schema), mode="append")
    planted = set(DeltaTable(uri).file_uris()) - before
    assert planted
    for path in planted:
        Path(path.removeprefix("file://")).unlink()


def recent(count: int, seed: int):
    return list(generate_records(count=count, seed=seed, days=0.0005,
                                 now=datetime.now(timezone.utc)))


def test_the_tracking_worker_reads_only_the_window_and_writes_a_copy_once(pipeline):
    first = recent(4, seed=2101)
    pipeline.produce(first)
    assert all(r.success for r in pipeline.drain(TRACKING))
    plant_unreadable_old_file(str(pipeline.delta_root / "itel_cabinet_task_tracking"),
                              "ingested_at", "event_id")

    pipeline.produce([first[0], *recent(3, seed=2102)])  # a copy of a record already written
    assert all(r.success for r in pipeline.drain(TRACKING))
    assert pipeline.lag(TRACKING) == 0
    table = DeltaTable(str(pipeline.delta_root / "itel_cabinet_task_tracking"))
    ids = pl.from_arrow(table.to_pyarrow_table(
        columns=["event_id"], filters=[("ingested_at", ">=", datetime.now(timezone.utc)
                                        - timedelta(hours=1))]))["event_id"]
    assert ids.len() == ids.n_unique() == 7


def test_the_api_worker_checks_only_the_window_and_sends_a_copy_once(pipeline, itel_simulator):
    first = recent(4, seed=2103)
    pipeline.produce(first)
    assert all(r.success for r in pipeline.drain(API))
    plant_unreadable_old_file(str(pipeline.delta_root / "itel_api_sends"), "sent_at", "ledger_key")

    pipeline.produce([first[0], *recent(3, seed=2104)])  # a copy of a record already sent
    assert all(r.success for r in pipeline.drain(API))
    assert pipeline.lag(API) == 0
    keys = [r["idempotency_key"] for r in itel_simulator.accepted_requests()]
    assert len(keys) == len(set(keys)) == 7
