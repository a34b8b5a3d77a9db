"""A run reads at most max_bytes_per_run bytes of record values (at least one record), commits
only what it read, and the next runs take the rest: large records never make one huge run.
Real broker, the tracking worker end to end (the API worker reads and commits through the same
ops).
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import polars as pl
import yaml

from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.ops.stage_batch import StageBatch
from itel_dagster.sensors.dispatch_plan import KafkaRange
from itel_dagster.settings.workers import WORKERS_FILE

TRACKING = "itel_cabinet_tracking_worker"
YESTERDAY_EVENING = (datetime.now(timezone.utc) - timedelta(days=1)).replace(
    hour=20, minute=0, second=0, microsecond=0)
BUDGET = 450_000  # two records of ~201 KB


def large(record, size: int = 200_000):
    """The event with a ~200 KB field the pipeline does not read (still a valid event)."""
    event = json.loads(record.value)
    event["attachment_text"] = "x" * size
    return record._replace(value=json.dumps(event).encode())


def set_workers(pipeline, **changes) -> None:
    path = pipeline.root / "config" / WORKERS_FILE
    data = yaml.safe_load(path.read_text())
    for worker in data["workers"].values():
        worker.update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_large_records_are_read_a_budget_at_a_time_and_each_written_once(pipeline):
    set_workers(pipeline, max_bytes_per_run=BUDGET)
    records = [large(r) for r in generate_records(count=5, seed=91, days=0.5,
                                                  now=YESTERDAY_EVENING)]
    pipeline.produce(records)

    results = pipeline.drain(TRACKING)
    assert results and all(r.success for r in results)
    metadata = [e.materialization.metadata for r in results
                for e in r.get_asset_materialization_events()]
    assert len(metadata) >= 3  # at most two of the five records per run
    assert sum(m["records"].value for m in metadata) == len(records)  # each read once
    assert all(m["read_bytes"].value <= BUDGET for m in metadata)
    assert pipeline.lag(TRACKING) == 0
    table = pipeline.tracking_table()
    assert table.height == table["event_id"].n_unique() == len(records)
    assert set(table["event_id"]) == {r.event_id for r in records}


def test_the_commit_stops_at_the_lower_of_the_read_and_the_final_stage_limits():
    ranges = tuple(KafkaRange("t", p, 10, 20) for p in range(4))
    batch = StageBatch(worker=TRACKING, kafka_ranges=ranges, rows=pl.DataFrame(),
                       read_until={1: 15, 2: 10, 3: 12}, commit_before={0: 13, 3: 11})
    assert batch.commit_to() == {0: 13, 1: 15, 2: 10, 3: 11}
    assert replace(batch, read_until=None, commit_before=None).commit_to() == \
        {p: 20 for p in range(4)}
