"""The asset checks end to end: real broker, simulators, Delta on disk; the checks job (and a
check alone, as the asset's Checks tab launches it) runs in process on the test's instance.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone

import dagster as dg
import polars as pl
from deltalake import DeltaTable, write_deltalake

from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.jobs.dead_letter_replay import DEAD_LETTER_REPLAY_JOB
from itel_dagster_tests.fixtures.pipeline_fixtures import code_location

TRACKING = "itel_cabinet_tracking_worker"
API = "itel_cabinet_api_worker"
NOW = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)  # not in the future
# Records of one UTC day (fewer runs to drain): yesterday from 08:00 to 20:00.
YESTERDAY_EVENING = (NOW - timedelta(days=1)).replace(hour=20)
UNIQUE, COMPLETE, FRESH = "event_id_unique_per_day", "complete_per_day", "freshness"
SENT = "every_valid_event_sent_or_dead_lettered"
LOST = "no_records_lost_to_retention"  # on both assets
DAY_CHECK_OPS = ("itel_cabinet_task_tracking_event_id_unique_per_day",
                 "itel_cabinet_task_tracking_complete_per_day",
                 "itel_api_sends_every_valid_event_sent_or_dead_lettered")


def day_of(timestamp_ms: int) -> date:
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=timezone.utc).date()


def days_of(records) -> list[date]:
    return sorted({day_of(r.timestamp_ms) for r in records})


def run_checks(pipeline, days, freshness_minutes: float = 15) -> dict:
    """Every check, as the schedule runs them: check name -> its evaluation."""
    defs = code_location()  # the code location as loaded for this test's files

    day_config = {"config": {"days": [d.isoformat() for d in days]}}
    run_config = {"ops": {**{op: day_config for op in DAY_CHECK_OPS},
                          "itel_cabinet_task_tracking_freshness":
                              {"config": {"freshness_minutes": freshness_minutes}}}}
    result = defs.resolve_job_def("itel_asset_checks_job").execute_in_process(
        run_config=run_config, instance=pipeline.instance)
    assert result.success  # a failed check is a result, never a failed run
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def day_facts(evaluation, day: date) -> dict:
    return evaluation.metadata["per_day"].value[day.isoformat()]


def total(evaluation, key: str) -> int:
    return evaluation.metadata[key].value


def test_all_checks_pass_after_both_workers_drained(pipeline):
    records = list(generate_records(count=200, seed=71, bad_fraction=0.1, days=1, now=NOW))
    pipeline.produce(records)
    assert all(r.success for r in pipeline.drain(TRACKING))
    assert all(r.success for r in pipeline.drain(API))
    days = days_of(records)

    checks = run_checks(pipeline, days)
    assert set(checks) == {UNIQUE, COMPLETE, FRESH, SENT, LOST}
    assert all(e.passed for e in checks.values()), {n: e.description for n, e in checks.items()}
    for day in days:
        on_day = [r for r in records if day_of(r.timestamp_ms) == day]
        valid = {r.event_id for r in on_day if r.bad_kind is None}
        complete = day_facts(checks[COMPLETE], day)
        assert complete["kafka_records"] == len(on_day)
        assert complete["in_table"] == len(valid) == complete["rows"] == complete["rows_matched"]
        assert complete["dead_lettered"] == len(on_day) - len(valid)  # the bad records
        assert complete["pending"] == complete["missing"] == complete["unexpected_rows"] == 0
        assert day_facts(checks[UNIQUE], day)["duplicate_rows"] == 0
        sent = day_facts(checks[SENT], day)
        assert sent["valid_events"] == sent["accepted"] == len(valid)
    assert total(checks[COMPLETE], "kafka_records") == len(records)
    assert checks[FRESH].metadata["lag"].value == 0

    # One check alone, as its Execute button in the asset's Checks tab runs it: default config.
    defs = code_location()  # the code location as loaded for this test's files

    key = dg.AssetCheckKey(dg.AssetKey("itel_cabinet_task_tracking"), UNIQUE)
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_check_selection={key})
    result = job.execute_in_process(instance=pipeline.instance)
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.passed
    today = NOW.date()
    assert evaluation.metadata["days"].value == f"{today - timedelta(days=1)}, {today}"


def test_a_damaged_day_fails_uniqueness_and_completeness_until_backfilled(pipeline):
    records = list(generate_records(count=200, seed=72, bad_fraction=0.05, days=0.5,
                                    now=YESTERDAY_EVENING))
    pipeline.produce(records)
    assert all(r.success for r in pipeline.drain(TRACKING))
    days = days_of(records)
    [target] = days
    path = str(pipeline.delta_root / "itel_cabinet_task_tracking")
    day_rows = pipeline.tracking_table().filter(
        (pl.col("year") == target.year) & (pl.col("month") == target.month)
        & (pl.col("day") == target.day)).sort("kafka_partition", "kafka_offset")
    deleted = day_rows["event_id"][:5].to_list()
    DeltaTable(path).delete(f"event_id IN ({', '.join(repr(e) for e in deleted)})")
    duplicated = day_rows["event_id"][10:14].to_list()
    write_deltalake(DeltaTable(path), day_rows[10:14], mode="append")
    stray = day_rows[20:21].with_columns(pl.lit("not-an-event").alias("event_id"))
    write_deltalake(DeltaTable(path), stray, mode="append")

    checks = run_checks(pipeline, days)
    unique = checks[UNIQUE]
    assert not unique.passed and unique.severity == dg.AssetCheckSeverity.ERROR
    facts = day_facts(unique, target)
    assert facts["duplicate_rows"] == 4
    assert sorted(facts["duplicated_event_ids"]) == sorted(f"{e} x2" for e in duplicated)
    assert unique.metadata["failed_days"].value == target.isoformat()
    assert unique.description.startswith(f"{target}: 4 duplicate rows")
    complete = checks[COMPLETE]
    assert not complete.passed and complete.severity == dg.AssetCheckSeverity.ERROR
    facts = day_facts(complete, target)
    assert facts["missing"] == 5
    assert {m.split(" @ ")[0] for m in facts["missing_records"]} == set(deleted)
    assert facts["unexpected_rows"] == 1 and facts["unexpected_row_ids"] == ["not-an-event"]
    assert deleted[0] in complete.description
    assert checks[SENT].passed  # the API worker has not started: everything pending
    assert total(checks[SENT], "pending") == len({r.event_id for r in records
                                                   if r.bad_kind is None})

    # A backfill of the day, as the daemon runs a UI backfill: the asset and its checks in one
    # run; the checks look at the run's day partition.
    defs = code_location()  # the code location as loaded for this test's files

    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection={dg.AssetKey("itel_cabinet_task_tracking")})
    result = job.execute_in_process(partition_key=target.isoformat(), instance=pipeline.instance,
                                    tags={"dagster/backfill": "test"})
    assert result.success
    checked = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(checked) == {UNIQUE, COMPLETE, FRESH, LOST}
    assert checked[UNIQUE].passed and checked[COMPLETE].passed
    assert checked[COMPLETE].metadata["days"].value == target.isoformat()
    assert day_facts(checked[COMPLETE], target)["missing"] == 0
    assert run_checks(pipeline, days)[UNIQUE].passed


def test_undrained_lag_is_pending_and_freshness_follows_lag_and_age(pipeline):
    first = list(generate_records(count=120, seed=73, bad_fraction=0.05, days=0.5,
                                  now=YESTERDAY_EVENING))
    pipeline.produce(first)
    assert all(r.success for r in pipeline.drain(TRACKING))
    # Stamped over the same hours: each partition holds the day's records out of order.
    waiting = list(generate_records(count=60, seed=74, days=0.5, now=YESTERDAY_EVENING))
    pipeline.produce(waiting)
    days = days_of(first + waiting)

    checks = run_checks(pipeline, days, freshness_minutes=15)
    assert checks[COMPLETE].passed
    assert total(checks[COMPLETE], "pending") == len(waiting)
    assert total(checks[COMPLETE], "missing") == 0
    fresh = checks[FRESH]
    assert fresh.passed  # records wait, but the table was written minutes ago
    assert fresh.metadata["lag"].value == len(waiting)
    assert fresh.metadata["age_minutes"].value < 15

    stale = run_checks(pipeline, days, freshness_minutes=0)[FRESH]
    assert not stale.passed and stale.severity == dg.AssetCheckSeverity.WARN
    assert f"{len(waiting)} records waiting" in stale.description

    assert all(r.success for r in pipeline.drain(TRACKING))
    checks = run_checks(pipeline, days, freshness_minutes=0)
    assert checks[FRESH].passed and checks[FRESH].metadata["lag"].value == 0
    assert checks[COMPLETE].passed and total(checks[COMPLETE], "pending") == 0


def test_dead_lettered_then_replayed_records_count_once(pipeline, monkeypatch):
    records = list(generate_records(count=40, seed=75, days=0.5, now=YESTERDAY_EVENING))
    blocker = pipeline.root / "not-a-directory"
    blocker.write_text("a file where the Delta root should be")
    monkeypatch.setenv("ITEL_DELTA_ROOT", str(blocker / "delta"))
    pipeline.produce(records)
    assert not any(r.success for r in pipeline.drain(TRACKING))  # Delta down: dead-lettered
    monkeypatch.setenv("ITEL_DELTA_ROOT", str(pipeline.delta_root))
    days = days_of(records)

    complete = run_checks(pipeline, days)[COMPLETE]
    assert complete.passed
    assert total(complete, "dead_lettered") == 40 and total(complete, "in_table") == 0

    defs = code_location()  # the code location as loaded for this test's files

    assert defs.resolve_job_def(DEAD_LETTER_REPLAY_JOB).execute_in_process(
        run_config={"ops": {"read_dead_letters": {"config": {"worker": TRACKING}}}},
        instance=pipeline.instance).success
    complete = run_checks(pipeline, days)[COMPLETE]
    assert complete.passed
    assert total(complete, "in_table") == 40 == total(complete, "kafka_records")
    assert total(complete, "dead_lettered") == 0
    assert total(complete, "written_after_dead_letter") == 40


def test_api_check_counts_rejections_as_dead_lettered_and_finds_a_lost_event(pipeline):
    # A contract where unknown assignments (ClaimX 404) have no project: iTel answers 422.
    pipeline.set_itel(payload={
        "task_id": "event.task_id", "assignment_id": "event.assignment_id",
        "project_id": "claimx.project_id", "task_status": "event.task_status",
        "repair_details": {"cabinet_id": "claimx.custom_fields.cabinet_id",
                           "technician_notes": "claimx.notes"},
        "source_system": "=claimx"})
    records = list(generate_records(count=80, seed=76, days=0.5, unknown_fraction=0.3,
                                    bad_fraction=0.05, now=YESTERDAY_EVENING))
    pipeline.produce(records)
    assert all(r.success for r in pipeline.drain(API))
    valid = [r for r in records if r.bad_kind is None]
    rejected = {r.event_id for r in valid if json.loads(r.value)["assignment_id"] >= 9_000_000}
    assert rejected
    later = list(generate_records(count=20, seed=77, days=0.5, now=YESTERDAY_EVENING))
    pipeline.produce(later)  # not drained: pending
    days = days_of(records + later)

    sent = run_checks(pipeline, days)[SENT]
    assert sent.passed, sent.description
    assert total(sent, "accepted") == len(valid) - len(rejected)
    assert total(sent, "dead_lettered") == len(rejected)
    assert total(sent, "pending") == len(later)
    assert total(sent, "missing") == 0

    # An accepted send vanishes from the ledger: the event was neither sent nor dead-lettered.
    lost = sorted({r.event_id for r in valid} - rejected)[0]
    ledger = DeltaTable(str(pipeline.delta_root / "itel_api_sends"))
    ledger.delete(f"event_id = '{lost}' AND outcome = 'accepted'")
    sent = run_checks(pipeline, days)[SENT]
    assert not sent.passed and sent.severity == dg.AssetCheckSeverity.ERROR
    assert total(sent, "missing") == 1
    [day] = [d for d in days if day_facts(sent, d)["missing"]]
    assert [m.split(" @ ")[0] for m in day_facts(sent, day)["missing_events"]] == [lost]
    assert lost in sent.description


def test_worker_runs_leave_the_checks_to_their_job_and_schedule():
    from itel_dagster.definitions import asset_checks_schedule, defs

    for job_name in ("itel_cabinet_tracking_job", "itel_cabinet_api_job"):
        assert not defs.resolve_job_def(job_name).asset_layer.asset_graph.asset_check_keys
    checks = defs.resolve_job_def("itel_asset_checks_job")
    assert {key.name for key in checks.asset_layer.asset_graph.asset_check_keys} == \
        {UNIQUE, COMPLETE, FRESH, SENT, LOST}
    assert asset_checks_schedule.job_name == "itel_asset_checks_job"
    assert asset_checks_schedule.cron_schedule == "*/15 * * * *"
    assert asset_checks_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
