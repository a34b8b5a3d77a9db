"""The facts of the asset checks (stages/day_audit.py), without Kafka, Delta or Dagster."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone

import polars as pl

from itel_dagster.checks.day_results import run_days
from itel_dagster.stages.day_audit import (
    audit_days,
    completeness,
    day_records,
    freshness,
    sends,
    summary,
    uniqueness,
)
from itel_dagster.stages.raw_batch import raw_batch_from_records

DAY = date(2026, 11, 5)
DAY_MS = int(datetime(2026, 11, 5, 9, tzinfo=timezone.utc).timestamp() * 1000)
TOPIC = "itel.cabinet.task.tracking"


def event(event_id: str, task_id: int = 32513) -> bytes:
    return json.dumps({"event_id": event_id, "task_id": task_id, "assignment_id": 7,
                       "project_id": "p1", "task_status": "assigned",
                       "event_type": "task.updated"}).encode()


def records(*values: tuple[int, int, bytes]) -> pl.DataFrame:
    """(partition, offset, value) -> day_records of those Kafka records."""
    raw = raw_batch_from_records((TOPIC, p, o, DAY_MS, b"7", v) for p, o, v in values)
    return day_records(raw, expected_task_id=32513)


def rows(*found: tuple[str, int, int]) -> pl.DataFrame:
    return pl.DataFrame(found, schema={"event_id": pl.String, "kafka_partition": pl.Int32,
                                       "kafka_offset": pl.Int64}, orient="row")


def letters(*coordinates: tuple[int, int]) -> pl.DataFrame:
    return pl.DataFrame(coordinates, schema={"kafka_partition": pl.Int32,
                                             "kafka_offset": pl.Int64}, orient="row")


def test_days_default_to_yesterday_and_today_utc_else_sorted_distinct():
    now = datetime(2026, 11, 5, 0, 30, tzinfo=timezone(timedelta(hours=2)))  # 4 Nov 22:30 UTC
    assert audit_days([], now) == [date(2026, 11, 3), date(2026, 11, 4)]
    assert audit_days(["2026-11-05", "2026-11-01", "2026-11-05"]) == \
        [date(2026, 11, 1), date(2026, 11, 5)]


def test_run_days_are_the_partitions_a_run_materializes():
    assert run_days({"dagster/partition": "2026-11-05"}) == ["2026-11-05"]
    assert run_days({"dagster/asset_partition_range_start": "2026-10-30",
                     "dagster/asset_partition_range_end": "2026-11-02"}) == \
        ["2026-10-30", "2026-10-31", "2026-11-01", "2026-11-02"]
    assert run_days({"dagster/backfill": "x"}) == []


def test_day_records_judge_each_record_with_the_workers_stages():
    judged = records((0, 0, event("a")), (0, 1, b"{not json"), (1, 0, event("b", task_id=1)),
                     (1, 1, event("a")))
    assert judged.rows() == [(0, 0, "a", True), (0, 1, None, False), (1, 0, None, False),
                             (1, 1, "a", True)]


def test_uniqueness_names_duplicated_event_ids_with_their_counts():
    facts = uniqueness(DAY, rows(("a", 0, 0), ("b", 0, 1), ("b", 0, 1), ("c", 0, 2), ("c", 0, 2),
                                 ("c", 1, 5)))
    assert not facts.passed and facts.severity == "ERROR"
    assert (facts.rows, facts.distinct_event_ids, facts.duplicate_rows) == (6, 3, 3)
    assert facts.duplicated_event_ids == ["c x3", "b x2"]
    assert "3 duplicate rows" in facts.problem
    assert uniqueness(DAY, rows(("a", 0, 0))).passed
    assert uniqueness(DAY, rows()).passed
    many = uniqueness(DAY, rows(*[(f"e{n}", 0, n) for n in range(8)] * 2), sample_size=7)
    assert len(many.duplicated_event_ids) == 7
    assert many.problem.endswith("e4 x2 and 2 more in the metadata")


def test_completeness_accounts_each_record_once():
    kafka = records(
        (0, 0, event("a")),  # row
        (0, 1, event("a")),  # duplicate of a: the same row
        (0, 2, b"{bad"),  # dead-lettered
        (0, 3, event("d")),  # dead-lettered, then replayed into the table
        (0, 4, event("e")),  # lost: no row, no error record, below the committed offset
        (0, 5, event("f")),  # pending: the group resumes at 5
        (1, 0, b"{bad"),  # lost
    )
    table = rows(("a", 0, 0), ("d", 0, 3),
                 ("new", 1, 9),  # a record written after the check read Kafka
                 ("stray", 1, 0))  # Kafka holds 1:0 and it is no valid event of the day
    facts = completeness(DAY, kafka, table, letters((0, 2), (0, 3), (0, 3), (5, 5)),
                         next_offsets={0: 5, 1: 1}, held={0: (0, 6), 1: (0, 2)})
    assert (facts.kafka_records, facts.valid_records, facts.invalid_records) == (7, 5, 2)
    assert (facts.in_table, facts.dead_lettered, facts.pending, facts.missing) == (3, 1, 1, 2)
    assert facts.written_after_dead_letter == 1
    assert facts.missing_records == ["e @ 0:4", "1:0"]
    assert (facts.rows, facts.rows_matched, facts.rows_after_read) == (4, 2, 1)
    assert facts.unexpected_rows == 1 and facts.unexpected_row_ids == ["stray"]
    assert not facts.passed and facts.severity == "ERROR"
    assert "2 Kafka records neither in the table nor dead-lettered: e @ 0:4, 1:0" in facts.problem


def test_rows_whose_records_retention_deleted_are_kept_not_unexpected():
    kafka = records((0, 20, event("a")))
    facts = completeness(DAY, kafka, rows(("a", 0, 20), ("expired", 0, 3)), letters(),
                         next_offsets={0: 21}, held={0: (20, 21)})
    assert facts.passed
    assert (facts.rows_beyond_retention, facts.unexpected_rows, facts.missing) == (1, 0, 0)


def test_only_stray_rows_fail_completeness_as_a_warning():
    facts = completeness(DAY, records((0, 0, event("a"))), rows(("a", 0, 0), ("x", 0, 0)),
                         letters(), next_offsets={0: 1}, held={0: (0, 1)})
    assert not facts.passed and facts.severity == "WARN"
    assert facts.problem == "1 rows of no valid record of the day: x"


def test_a_group_that_never_committed_leaves_everything_pending():
    kafka = records((0, 0, event("a")), (0, 1, b"{bad"))
    facts = completeness(DAY, kafka, rows(), letters(), next_offsets={0: 0}, held={0: (0, 2)})
    assert facts.passed and facts.pending == 2


def test_sends_per_event_accepted_or_dead_lettered():
    kafka = records(
        (0, 0, event("a")), (0, 1, event("a")),  # accepted once, its duplicate skipped
        (0, 2, event("r")),  # rejected: ledger row and error record
        (0, 3, event("l")),  # rejected in the ledger, its error record never published
        (0, 4, event("m")),  # nothing: lost
        (0, 5, b"{bad"),  # not a valid event: not this check's business
        (0, 6, event("p")),  # pending
    )
    ledger = pl.DataFrame({"event_id": ["a", "r", "l"],
                           "outcome": ["accepted", "rejected", "dead_lettered"]})
    facts = sends(DAY, kafka, ledger, letters((0, 2), (0, 5)), next_offsets={0: 6})
    assert facts.valid_events == 5
    assert (facts.accepted, facts.dead_lettered, facts.failed_in_ledger_only, facts.pending,
            facts.missing) == (1, 1, 1, 1, 1)
    assert facts.missing_events == ["m @ 0:4"]
    assert not facts.passed and facts.severity == "ERROR"


def test_an_event_is_pending_only_while_none_of_its_records_was_reached():
    kafka = records((0, 0, event("a")), (0, 9, event("a")))
    empty = pl.DataFrame(schema={"event_id": pl.String, "outcome": pl.String})
    assert sends(DAY, kafka, empty, letters(), next_offsets={0: 0}).pending == 1
    assert sends(DAY, kafka, empty, letters(), next_offsets={0: 5}).missing == 1


def test_freshness_nothing_waiting_or_written_recently():
    now = datetime(2026, 11, 5, 12, tzinfo=timezone.utc)
    old = now - timedelta(hours=2)
    assert freshness(0, old, now, 15).passed
    assert freshness(0, None, now, 15).passed
    recent = freshness(40, now - timedelta(minutes=5), now, 15)
    assert recent.passed and recent.age_minutes == 5.0
    stale = freshness(40, old, now, 15)
    assert not stale.passed and stale.severity == "WARN" and stale.age_minutes == 120.0
    assert not freshness(3, None, now, 15).passed
    assert not freshness(1, now - timedelta(seconds=1), now, 0).passed


def test_summary_passes_when_every_day_passes_worst_severity_wins():
    clean = uniqueness(date(2026, 11, 4), rows(("a", 0, 0)))
    stray = completeness(DAY, records((0, 0, event("a"))), rows(("a", 0, 0), ("x", 0, 0)),
                         letters(), next_offsets={0: 1}, held={0: (0, 1)})
    lost = completeness(date(2026, 11, 6), records((0, 0, event("b"))), rows(), letters(),
                        next_offsets={0: 1}, held={0: (0, 1)})
    passed, severity, description, metadata = summary([clean])
    assert passed and description == "passed on 2026-11-04"
    assert metadata["rows"] == 1 and metadata["per_day"]["2026-11-04"]["duplicate_rows"] == 0
    passed, severity, description, metadata = summary([stray])
    assert (passed, severity) == (False, "WARN")
    passed, severity, description, metadata = summary([stray, lost])
    assert (passed, severity) == (False, "ERROR")
    assert metadata["failed_days"] == "2026-11-05, 2026-11-06"
    assert metadata["missing"] == 1 and metadata["unexpected_rows"] == 1
    assert description.startswith("2026-11-05: 1 rows of no valid record")
