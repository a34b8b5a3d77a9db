"""The plugin trigger's pure stages: which upstream ClaimX task events become the seed's events,
the records they become, and which ledger rows mean "forward again"."""

from __future__ import annotations

from datetime import datetime, timezone

import orjson
import polars as pl

from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.devstack.publisher.upstream_events import upstream_records
from itel_dagster.stages.raw_batch import raw_batch_from_records
from itel_dagster.stages.task_events import (
    forward_ledger_rows,
    forwarded_again,
    seed_event_messages,
    select_task_events,
)
from itel_dagster.stages.transform import transform
from itel_dagster.stages.validate import validate

NOW = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
STATUSES = ["assigned", "in_progress", "completed"]


def _upstream(events: list[dict | bytes]) -> pl.DataFrame:
    raw = raw_batch_from_records(
        ("claimx.task.events", 0, offset, 1_764_590_400_000 + offset, b"k",
         event if isinstance(event, bytes) else orjson.dumps(event))
        for offset, event in enumerate(events))
    return transform(raw, worker="trigger", ingested_at=NOW)


def _event(event_id: str, task_id=32513, status="assigned", **changes) -> dict:
    event = {"event_id": event_id, "event_type": "CUSTOM_TASK_ASSIGNED", "project_id": "5001",
             "task_id": task_id, "assignment_id": 1_000_007, "task_name": "iTel Cabinet Repair",
             "task_status": status, "timestamp": "2026-12-01T10:00:00.250Z",
             "task": {"task_id": task_id, "status": status, "cabinet_id": "CAB-1"},
             "project": {"project_id": "5001", "loss_type": "water"}}
    event.update(changes)
    return event


def test_only_the_tasks_events_on_a_configured_change_are_selected_and_the_rest_counted():
    events = _upstream([
        _event("a"), _event("b", status="completed"),
        _event("c", task_id=41007), _event("d", task_id="32514"),  # other tasks
        _event("e", status="reopened"),  # a lifecycle change not configured
        _event("f", task_id=41007, assignment_id="not a number"),  # other task, still skipped
    ])
    result = select_task_events(events, 32513, STATUSES, "iTel Cabinet Task Tracking")
    assert result.selected["event_id"].to_list() == ["a", "b"]
    assert result.other_tasks == 3 and result.other_statuses == 1
    assert result.errors.is_empty()
    assert result.selected["trigger_name"].unique().to_list() == ["iTel Cabinet Task Tracking"]
    # Configured statuses decide: with reopened listed, e is forwarded too.
    wider = select_task_events(events, 32513, [*STATUSES, "reopened"], "t")
    assert wider.selected["event_id"].to_list() == ["a", "b", "e"]


def test_an_unreadable_upstream_record_of_the_task_is_an_error_row_with_validates_reason():
    events = _upstream([b"{not json", _event("g", assignment_id=None), _event("h"),
                        _event("i", task_id="32513.0")])
    result = select_task_events(events, 32513, STATUSES, "t")
    assert result.selected["event_id"].to_list() == ["h"]
    assert dict(zip(result.errors["kafka_offset"].to_list(),
                    result.errors["error_type"].to_list())) == {
        0: "malformed_json", 1: "missing_field", 3: "wrong_type"}
    assert result.other_tasks == 0


def test_a_seed_event_is_keyed_by_assignment_and_passes_the_workers_validation():
    events = _upstream([_event("a", status="in_progress", event_type="CUSTOM_TASK_UPDATED")])
    selected = select_task_events(events, 32513, STATUSES, "iTel Cabinet Task Tracking").selected
    [(key, value)] = seed_event_messages(selected)
    assert key == b"1000007"
    seed = orjson.loads(value)
    assert seed == {
        "trigger_name": "iTel Cabinet Task Tracking", "event_id": "a",
        "event_type": "CUSTOM_TASK_UPDATED", "task_id": 32513, "assignment_id": 1_000_007,
        "project_id": "5001", "task_status": "in_progress", "timestamp": "2026-12-01T10:00:00.250Z",
        "task": {"task_id": 32513, "status": "in_progress", "cabinet_id": "CAB-1"},
        "project": {"project_id": "5001", "loss_type": "water"}}
    # What the trigger publishes, the tracking and API workers take as a valid event.
    downstream = transform(raw_batch_from_records([("t", 0, 0, 1, key, value)]), worker="w",
                           ingested_at=NOW)
    assert validate(downstream, expected_task_id=32513).errors.is_empty()


def test_the_publishers_upstream_events_are_of_the_task_and_of_others():
    records = list(upstream_records(generate_records(200, seed=3, now=NOW), 0.3, seed=3))
    result = select_task_events(_upstream([r.value for r in records]), 32513, STATUSES, "t")
    assert result.errors.is_empty()
    assert 30 <= result.other_tasks <= 90 and result.selected.height == 200 - result.other_tasks
    assert "trigger_name" not in orjson.loads(records[0].value)


def _ledger(rows: pl.DataFrame, run_id: str) -> pl.DataFrame:
    return forward_ledger_rows(rows, run_id)


def test_only_an_uncommitted_forward_of_the_same_record_is_forwarded_again():
    rows = select_task_events(_upstream([_event("a"), _event("b"), _event("c")]), 32513,
                              STATUSES, "t").selected
    ledger = pl.concat([
        _ledger(rows.filter(pl.col("event_id") == "a"), "dead-run"),   # died before committing
        _ledger(rows.filter(pl.col("event_id") == "b"), "good-run"),   # committed
        # c: forwarded from another record (offset 9) by a run that died: that copy is not this
        _ledger(rows.filter(pl.col("event_id") == "c").with_columns(
            pl.lit(9, dtype=pl.Int64).alias("kafka_offset")), "dead-run"),
    ])
    again = forwarded_again(rows, ledger, succeeded_runs={"good-run"})
    assert again["event_id"].to_list() == ["a"]
    # Once a later run forwarded a again and succeeded, a is not forwarded a third time.
    ledger = pl.concat([ledger, _ledger(rows.filter(pl.col("event_id") == "a"), "retry-run")])
    assert forwarded_again(rows, ledger, {"good-run", "retry-run"}).is_empty()
