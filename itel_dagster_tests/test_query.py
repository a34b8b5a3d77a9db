"""`itel-dagster query` on small real Delta tables written by the workers' own stages and writer
(transform, validate, the ClaimX lookup join, tracking_rows / ledger_rows, DeltaTableWriter),
through the CLI (CliRunner): each named query, --sql, the formats, and the one-line errors."""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import datetime, time, timedelta, timezone

import orjson
import polars as pl
import pytest
from click.testing import CliRunner

from itel_dagster_bench.query_times import main as bench_main
from itel_dagster_bench.query_times import write_tables as write_bench_tables
from itel_dagster.cli import main
from itel_dagster.devstack import claimx_world as world
LEDGER_TABLE = "itel_api_sends"
from itel_dagster.resources.delta_tables import DeltaTableWriter
from itel_dagster.settings.connections import load_itel_connection
from itel_dagster_bench.seed_workers import TRACKING_WORKER
from itel_dagster.settings.workers import load_workers
from itel_dagster_bench.stages_throughput import TOPIC, tracking_event
from itel_dagster.stages.enrich import apply_lookups
from itel_dagster.stages.itel_payload import with_payloads
from itel_dagster.stages.raw_batch import raw_batch_from_records
from itel_dagster.stages.send_ledger import ledger_rows
from itel_dagster.stages.tracking_rows import tracking_rows
from itel_dagster.stages.transform import transform
from itel_dagster.stages.validate import validate

TODAY = datetime.now(timezone.utc).date()
# (assignment, status, days before today, minute of the day, send outcome)
EVENTS = [
    (1, "assigned", 2, 60, "accepted"),
    (2, "assigned", 2, 70, "accepted"),
    (2, "completed", 2, 80, "rejected"),
    (1, "in_progress", 1, 60, "accepted"),
    (1, "completed", 0, 1, "dead_lettered"),
    (2, "in_progress", 0, 2, "accepted"),
    (3, "assigned", 0, 3, "accepted"),
    (3, "assigned", 0, 4, "accepted"),  # the same status again: no transition
]


def _enriched_events() -> pl.DataFrame:
    records = []
    for offset, (assignment, status, back, minute, _) in enumerate(EVENTS):
        at = datetime.combine(TODAY - timedelta(days=back), time(), timezone.utc) \
            + timedelta(minutes=minute)
        event = tracking_event(assignment, offset, task_status=status,
                               timestamp=at.isoformat().replace("+00:00", "Z"))
        records.append((TOPIC, 0, offset, int(at.timestamp() * 1000), str(assignment).encode(),
                        orjson.dumps(event)))
    settings = load_workers()[TRACKING_WORKER]
    valid = validate(transform(raw_batch_from_records(records), worker=settings.name),
                     settings.expected_task_id).valid
    assert valid.height == len(EVENTS)
    lookups = {a: ("enriched", orjson.dumps(world.claimx_task(a)).decode()) for a in (1, 2, 3)}
    return apply_lookups(valid, lookups)


def write_tables(root) -> None:
    """Both tables of EVENTS under `root`, as the workers write them."""
    enriched = _enriched_events()
    settings = load_workers()[TRACKING_WORKER]
    DeltaTableWriter(f"{root}/{settings.delta_table}").merge_new_rows(
        tracking_rows(enriched, settings.column_mapping or {}))
    template = load_itel_connection({"ITEL_CABINET_API_BASE_URL": "http://127.0.0.1:9",
                                     "ITEL_CABINET_API_TOKEN": "unused", **os.environ}).payload
    outcomes = pl.Series("outcome", [e[4] for e in EVENTS])
    sent = with_payloads(enriched, template).sort("kafka_offset").with_columns(
        outcomes, pl.lit(201).alias("status_code"), pl.lit(1).alias("attempts"),
        pl.lit(["HTTP 201 in 5 ms"]).alias("attempt_log"), pl.lit(5.0).alias("latency_ms"),
        pl.lit("{}").alias("response_body"), pl.lit(None, pl.String).alias("itel_id"),
        pl.lit(datetime.now(timezone.utc)).alias("sent_at"))
    ledger = ledger_rows(sent, run_id="run-1")
    # The rejected event, replayed by a later run and accepted then.
    replayed = ledger_rows(sent.filter(pl.col("outcome") == "rejected")
                           .with_columns(pl.lit("accepted").alias("outcome")), run_id="run-2")
    DeltaTableWriter(f"{root}/{LEDGER_TABLE}", key="ledger_key").merge_new_rows(
        pl.concat([ledger, replayed]))


@pytest.fixture(scope="module")
def delta_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("query_delta")
    write_tables(root)
    return str(root)


def query(root: str, *args: str):
    return CliRunner().invoke(main, ["query", "--delta-root", root, *args])


def query_json(root: str, *args: str) -> list[dict]:
    result = query(root, *args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def day(back: int) -> str:
    return (TODAY - timedelta(days=back)).isoformat()


def test_recent_newest_first_up_to_the_limit(delta_root):
    rows = query_json(delta_root, "recent", "--limit", "3")
    assert [(r["assignment_id"], r["task_status"]) for r in rows] == [
        (3, "assigned"), (3, "assigned"), (2, "in_progress")]
    assert rows[0]["event_timestamp"] > rows[1]["event_timestamp"] > rows[2]["event_timestamp"]


def test_lifecycle_is_one_assignments_events_in_order(delta_root):
    rows = query_json(delta_root, "lifecycle", "--assignment", "1")
    assert [(r["previous_status"], r["task_status"]) for r in rows] == [
        (None, "assigned"), ("assigned", "in_progress"), ("in_progress", "completed")]
    assert query_json(delta_root, "lifecycle", "--assignment", "999") == []


def test_transitions_count_status_changes_per_assignment(delta_root):
    changes = {(r["from_status"], r["to_status"]): (r["transitions"], r["assignments"])
               for r in query_json(delta_root, "transitions")}
    assert changes == {("assigned", "in_progress"): (1, 1), ("in_progress", "completed"): (1, 1),
                       ("assigned", "completed"): (1, 1), ("completed", "in_progress"): (1, 1)}
    # Today's changes only; assignment 1's previous status comes from yesterday's event.
    today = {(r["from_status"], r["to_status"]) for r in query_json(delta_root, "transitions",
                                                                     "--days", "1")}
    assert today == {("in_progress", "completed"), ("completed", "in_progress")}


def test_daily_counts_are_events_per_day_and_status(delta_root):
    rows = query_json(delta_root, "daily-counts")
    assert [(r["day"], r["task_status"], r["events"]) for r in rows] == [
        (day(2), "assigned", 2), (day(2), "completed", 1), (day(1), "in_progress", 1),
        (day(0), "assigned", 2), (day(0), "completed", 1), (day(0), "in_progress", 1)]


def test_send_outcomes_per_day_from_the_ledger(delta_root):
    rows = query_json(delta_root, "send-outcomes")
    assert rows == [
        {"day": day(2), "accepted": 3, "rejected": 1, "dead_lettered": 0, "events": 3},
        {"day": day(1), "accepted": 1, "rejected": 0, "dead_lettered": 0, "events": 1},
        {"day": day(0), "accepted": 3, "rejected": 0, "dead_lettered": 1, "events": 4},
    ]


def test_sql_over_both_tables_as_table_and_csv(delta_root):
    sql = ("SELECT t.assignment_id, COUNT(*) AS sends FROM tracking t JOIN sends s "
           "ON t.event_id = s.event_id WHERE s.outcome = 'accepted' "
           "GROUP BY t.assignment_id ORDER BY t.assignment_id")
    result = query(delta_root, "--sql", sql, "--format", "csv")
    assert result.exit_code == 0, result.output
    assert list(csv.DictReader(io.StringIO(result.stdout))) == [
        {"assignment_id": "1", "sends": "2"}, {"assignment_id": "2", "sends": "3"},
        {"assignment_id": "3", "sends": "2"}]
    table = query(delta_root, "--sql", sql)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split("|")[1:3] == [" assignment_id ", " sends "]
    assert lines[-1] == "(3 rows)"


@pytest.mark.parametrize("sql, says", [
    ("SELEC * FROM tracking", "sql parser error"),
    ("SELECT no_such_column FROM tracking", 'unable to find column "no_such_column"'),
    ("SELECT * FROM no_such_table", "relation 'no_such_table' was not found"),
    ("SELECT event_id / 2 FROM tracking", "division with 'String'"),
])
def test_a_bad_query_is_one_line_and_exit_2(delta_root, sql, says):
    result = query(delta_root, "--sql", sql)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and says in result.stderr
    assert "Traceback" not in result.output


def test_a_missing_table_is_one_line_and_exit_2(tmp_path):
    for args in (["recent"], ["send-outcomes"], ["--sql", "SELECT * FROM sends"]):
        result = query(str(tmp_path), *args)
        assert result.exit_code == 2, result.output
        assert len(result.stderr.splitlines()) == 1
        assert "does not exist yet" in result.stderr and str(tmp_path) in result.stderr


def test_bench_tables_have_the_schemas_the_workers_write(delta_root, tmp_path):
    write_bench_tables(tmp_path, rows=50, appends=2)
    for name in (load_workers()[TRACKING_WORKER].delta_table, LEDGER_TABLE):
        bench = pl.scan_delta(str(tmp_path / name)).collect_schema()
        assert bench == pl.scan_delta(f"{delta_root}/{name}").collect_schema(), name
    assert pl.read_delta(str(tmp_path / LEDGER_TABLE)).height == 50


def test_bench_times_every_named_query(capsys):
    bench_main(["--rows", "500", "--repeats", "1"])
    printed = capsys.readouterr().out
    for query in ("recent", "lifecycle", "transitions", "daily-counts", "send-outcomes"):
        assert f"\n{query}" in printed
