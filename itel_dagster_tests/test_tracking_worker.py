"""The tracking worker end to end: real broker, ClaimX simulator, Delta on disk, Dagster runs.

Each test has its own topics and groups (the `pipeline` fixture); `drain` evaluates the sensor and
executes its run requests the way the daemon would.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone

import polars as pl

from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster_tests.fixtures.record_copies import (
    drain_a_copy_across_midnight,
    drain_with_a_retried_copy,
)

TRACKING = "itel_cabinet_tracking_worker"
API = "itel_cabinet_api_worker"


def utc_day(timestamp_ms: int) -> tuple[int, int, int]:
    day = datetime.fromtimestamp(timestamp_ms / 1000, tz=timezone.utc)
    return day.year, day.month, day.day


def test_thousand_events_with_bad_records_land_exactly_once(pipeline):
    # 30% bad: 5% of each of the six kinds.
    records = list(generate_records(count=1000, seed=7, bad_fraction=0.30, days=3))
    pipeline.produce(records)
    results = pipeline.drain(TRACKING)
    assert results and all(r.success for r in results)

    valid = {r.event_id: r for r in records if r.bad_kind is None}
    bad = [r for r in records if r.bad_kind is not None]
    assert Counter(r.bad_kind for r in bad) == {kind: 50 for kind in (
        "malformed_json", "missing_field", "wrong_task_id", "wrong_type", "non_utf8", "oversized")}

    table = pipeline.tracking_table()
    assert table.height == len(valid) == table["event_id"].n_unique()
    assert set(table["event_id"]) == set(valid)
    assert set(table["enrichment_status"]) == {"enriched"}
    # Every row sits in the day partition of its Kafka timestamp.
    for row in table.select("event_id", "year", "month", "day").iter_rows():
        assert row[1:] == utc_day(valid[row[0]].timestamp_ms)
    assert len({(y, m, d) for y, m, d in table.select("year", "month", "day").iter_rows()}) >= 3
    enriched = json.loads(table["claimx_task_full"][0])
    assert enriched["assignment_id"] == table["assignment_id"][0]

    error_messages = pipeline.consume_all(pipeline.tracking.error_topic)
    errors = [json.loads(m.value()) for m in error_messages]
    assert len(errors) == len(bad)
    # Keyed as the input (the assignment_id), the facts repeated as headers.
    assert {m.key() for m in error_messages} <= {r.key for r in bad}
    assert all(dict(m.headers())["error_type"].decode() == json.loads(m.value())["error_type"]
               for m in error_messages)
    by_offset = {(e["kafka_partition"], e["kafka_offset"]): e for e in errors}
    assert all(e["stage"] == "validate" and e["worker"] == TRACKING and e["error_message"] for e in errors)
    kinds = Counter(e["error_type"] for e in errors)
    assert kinds == {"malformed_json": 50, "missing_field": 50, "wrong_task_id": 50,
                     "wrong_type": 50, "non_utf8": 50, "oversized": 50}
    assert len(by_offset) == len(bad)

    successes = [json.loads(m.value()) for m in pipeline.consume_all(pipeline.tracking.success_topic)]
    assert sorted(s["event_id"] for s in successes) == sorted(valid)
    assert all(s["delta_version"] >= 0 and s["day_partition"] for s in successes)

    assert pipeline.lag(TRACKING) == 0
    assert set(pipeline.committed(API).values()) == {None}  # the API worker's group untouched

    metadata = [event.materialization.metadata for r in results
                for event in r.get_asset_materialization_events()]
    assert len(metadata) == len(results)
    assert sum(m["records"].value for m in metadata) == 1000
    assert sum(m["failed"].value for m in metadata) == len(bad)
    assert sum(m["delta_inserted"].value for m in metadata) == len(valid)
    assert all({"kafka_range", "duration_seconds", "delta_version", "enrichment_enriched"} <= set(m)
               for m in metadata if m["succeeded"].value)
    assert all(m["peak_rss_mb"].value > 50 for m in metadata)  # the run process's own peak
    log = (pipeline.root / "logs" / "tracking_worker.log").read_text()
    assert "committed" in log and "invalid records go to" in log


def test_reruns_stale_cursors_and_lost_cursors_add_no_duplicates(pipeline):
    first = list(generate_records(count=300, seed=11, days=2))
    pipeline.produce(first)
    tick = pipeline.tick(TRACKING)
    stale_cursor = pipeline.cursors[TRACKING]
    executed = [pipeline.execute(TRACKING, r) for r in tick.run_requests]
    assert all(r.success for r in executed)
    # Re-execute every run of that tick: the same ranges again, refused at the commit (the
    # group moved past their start).
    for request in tick.run_requests:
        assert not pipeline.execute(TRACKING, request).success
    # Re-evaluate with the cursor from before those runs, as if the daemon lost its last tick.
    pipeline.cursors[TRACKING] = stale_cursor
    pipeline.drain(TRACKING)
    # Restart with no cursor at all, mid-way through more records.
    second = list(generate_records(count=200, seed=12, days=1))
    pipeline.produce(second)
    pipeline.tick(TRACKING)  # dispatched, but the "daemon dies" before running them
    pipeline.cursors[TRACKING] = None
    pipeline.drain(TRACKING)

    table = pipeline.tracking_table()
    expected = {r.event_id for r in first + second}
    assert table.height == len(expected) == table["event_id"].n_unique()
    assert set(table["event_id"]) == expected
    assert pipeline.lag(TRACKING) == 0


def test_claimx_down_writes_rows_as_skipped_with_a_warning(pipeline, claimx_simulator):
    claimx_simulator.set_faults(error_rate=1.0, error_status=503)
    records = list(generate_records(count=60, seed=21, days=1))
    pipeline.produce(records)
    assert all(r.success for r in pipeline.drain(TRACKING))
    table = pipeline.tracking_table()
    assert table.height == 60
    assert set(table["enrichment_status"]) == {"skipped"}
    assert table["claimx_task_full"].null_count() == 60
    assert pipeline.consume_all(pipeline.tracking.error_topic) == []
    log = (pipeline.root / "logs" / "tracking_worker.log").read_text()
    assert "ClaimX unavailable (HTTP 503" in log


def test_unknown_assignment_is_not_found(pipeline):
    records = list(generate_records(count=90, seed=5, days=1, unknown_fraction=0.5))
    pipeline.produce(records)
    pipeline.drain(TRACKING)
    statuses = pipeline.tracking_table().group_by("enrichment_status").len()
    assert set(statuses["enrichment_status"]) == {"enriched", "not_found"}
    unknown = pipeline.tracking_table().filter(pl.col("assignment_id") >= 9_000_000)
    assert set(unknown["enrichment_status"]) == {"not_found"}


def test_delta_unavailable_dead_letters_fails_the_run_and_recovers(pipeline, monkeypatch):
    blocker = pipeline.root / "not-a-directory"
    blocker.write_text("a file where the Delta root should be")
    monkeypatch.setenv("ITEL_DELTA_ROOT", str(blocker / "delta"))
    records = list(generate_records(count=40, seed=31, days=1))
    pipeline.produce(records)
    results = pipeline.drain(TRACKING)
    assert results and not any(r.success for r in results)
    errors = [json.loads(m.value()) for m in pipeline.consume_all(pipeline.tracking.error_topic)]
    assert sorted(e["event_id"] for e in errors) == sorted(r.event_id for r in records)
    assert {e["stage"] for e in errors} == {"delta_write"}
    assert all("delta" in e["error_type"] for e in errors)
    assert pipeline.lag(TRACKING) == 0  # offsets moved on: nothing blocks later records

    monkeypatch.setenv("ITEL_DELTA_ROOT", str(pipeline.delta_root))
    later = list(generate_records(count=30, seed=32, days=1))
    pipeline.produce(later)
    assert all(r.success for r in pipeline.drain(TRACKING))
    assert set(pipeline.tracking_table()["event_id"]) == {r.event_id for r in later}


def test_one_claimx_request_per_assignment_within_the_cache_window(pipeline, claimx_simulator):
    records = list(generate_records(count=150, seed=41, days=1))
    pipeline.produce(records)
    claimx_simulator.clear_stats()
    pipeline.drain(TRACKING)
    assignments = {json.loads(r.value)["assignment_id"] for r in records}
    stats = claimx_simulator.stats()
    gets = stats["routes"]["GET /api/v1/tasks/{assignment_id}"]["total"]
    assert gets == len(assignments) < len(records)
    # The same events again (another run, another process would share the same cache file).
    pipeline.produce(list(generate_records(count=150, seed=41, days=1)))
    pipeline.drain(TRACKING)
    assert claimx_simulator.stats()["routes"]["GET /api/v1/tasks/{assignment_id}"]["total"] == gets


def test_same_event_twice_in_one_run_writes_one_row_and_commits(pipeline):
    records, _, metadata = drain_with_a_retried_copy(pipeline, TRACKING, seed=42)
    table = pipeline.tracking_table()
    assert table.height == len(records) == table["event_id"].n_unique()
    assert sum(m["delta_inserted"].value for m in metadata) == len(records)


def test_a_copy_redelivered_across_midnight_adds_no_second_row(pipeline):
    first = drain_a_copy_across_midnight(pipeline, TRACKING, seed=43)
    table = pipeline.tracking_table()
    assert table["event_id"].to_list() == [first.event_id]
    assert table.select("year", "month", "day").row(0) == utc_day(first.timestamp_ms)
