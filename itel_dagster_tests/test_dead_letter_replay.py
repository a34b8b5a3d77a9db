"""Dead-letter replay end to end: records dead-lettered during an outage, replayed after the fix
through the worker's own stages, land exactly once; a replay that fails again re-dead-letters.

Real broker, simulators, Delta on disk; the replay job runs in process on the test's instance.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest

from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.jobs.dead_letter_replay import DEAD_LETTER_REPLAY_JOB
from itel_dagster.stages.dead_letters import REPLAY_TABLE
from itel_dagster_tests.fixtures.pipeline_fixtures import code_location

TRACKING = "itel_cabinet_tracking_worker"
API = "itel_cabinet_api_worker"


def replay(pipeline, worker: str, expect_success: bool = True, **config):
    defs = code_location()  # the code location as loaded for this test's files

    result = defs.resolve_job_def(DEAD_LETTER_REPLAY_JOB).execute_in_process(
        run_config={"ops": {"read_dead_letters": {"config": {"worker": worker, **config}}}},
        instance=pipeline.instance, raise_on_error=False)
    assert result.success is expect_success
    return result


FINAL_NODE = {TRACKING: "finish_delta_write_replay", API: "finish_itel_api_send_replay"}


def summary(result) -> dict:
    """The replay run's summary (its last op's output)."""
    worker = result.dagster_run.run_config["ops"]["read_dead_letters"]["config"]["worker"]
    return result.output_for_node(FINAL_NODE[worker])


def replay_log(pipeline) -> pl.DataFrame:
    return pl.read_delta(str(pipeline.delta_root / REPLAY_TABLE))


def error_records(pipeline, topic: str) -> list[dict]:
    return [dict(json.loads(m.value()), error_record=f"{m.topic()}:{m.partition()}:{m.offset()}")
            for m in pipeline.consume_all(topic)]


def accepted_by_event(itel) -> dict[str, list[dict]]:
    by_event = defaultdict(list)
    for record in itel.accepted_requests():
        by_event[record["idempotency_key"]].append(record)
    return by_event


@pytest.fixture
def delta_down(pipeline, monkeypatch):
    """Makes the Delta root unwritable (a file where its folder should be); call it to fix."""
    blocker = pipeline.root / "not-a-directory"
    blocker.write_text("a file where the Delta root should be")
    monkeypatch.setenv("ITEL_DELTA_ROOT", str(blocker / "delta"))
    return lambda: monkeypatch.setenv("ITEL_DELTA_ROOT", str(pipeline.delta_root))


def test_tracking_replay_after_delta_returns_writes_each_event_once(pipeline, delta_down):
    records = list(generate_records(count=40, seed=61, days=1))
    pipeline.produce(records)
    assert not any(r.success for r in pipeline.drain(TRACKING))
    first = error_records(pipeline, pipeline.tracking.error_topic)
    assert Counter(e["error_type"] for e in first) == {"delta_unavailable": 40}

    # Replayed while Delta is still down: the run fails, the records are back with attempt 2.
    replay(pipeline, TRACKING, expect_success=False)
    both = error_records(pipeline, pipeline.tracking.error_topic)
    again = [e for e in both if e["error_record"] not in {f["error_record"] for f in first}]
    assert len(again) == 40 and {e["attempt"] for e in again} == {2}
    assert {(e["kafka_partition"], e["kafka_offset"]) for e in again} == \
        {(e["kafka_partition"], e["kafka_offset"]) for e in first}
    assert {e["event_id"] for e in again} == {r.event_id for r in records}

    delta_down()  # fixed
    result = replay(pipeline, TRACKING)
    table = pipeline.tracking_table()
    assert table.height == 40 == table["event_id"].n_unique()
    assert set(table["event_id"]) == {r.event_id for r in records}
    assert set(table["enrichment_status"]) == {"enriched"}
    # Both error records of every event (attempt 1 and 2) are marked replayed by this run.
    log = replay_log(pipeline)
    assert set(log["error_record"]) == {e["error_record"] for e in both}
    assert set(log["outcome"]) == {"replayed"} and log["replay_run_id"].n_unique() == 1
    successes = [json.loads(m.value()) for m in pipeline.consume_all(pipeline.tracking.success_topic)]
    assert sorted(s["event_id"] for s in successes) == sorted(r.event_id for r in records)
    assert {s["replayed_from"] for s in successes} <= {e["error_record"] for e in again}
    materialized = [e.materialization for e in result.get_asset_materialization_events()]
    assert {m.asset_key.to_user_string() for m in materialized} == {"itel_cabinet_task_tracking"}
    assert sum(m.metadata["rows_replayed"].value for m in materialized) == 40
    assert summary(result)["delta_inserted"] == 40

    # Replaying again changes nothing: everything is already replayed.
    again_result = replay(pipeline, TRACKING)
    assert summary(again_result)["error_records_selected"] == 0
    assert pipeline.tracking_table().height == 40
    assert replay_log(pipeline).height == log.height
    assert len(error_records(pipeline, pipeline.tracking.error_topic)) == 80


def test_api_replay_after_itel_stops_rejecting_sends_each_event_once(pipeline, itel_simulator):
    itel_simulator.set_faults(error_rate=1.0, error_status=400)
    records = list(generate_records(count=30, seed=62, days=1))
    pipeline.produce(records)
    assert all(r.success for r in pipeline.drain(API))
    dead = error_records(pipeline, pipeline.api.error_topic)
    assert Counter(e["error_type"] for e in dead) == {"itel_rejected": 30}
    assert pipeline.lag(API) == 0 and accepted_by_event(itel_simulator) == {}

    itel_simulator.clear_faults()
    result = replay(pipeline, API, error_types=["itel_rejected"])
    accepted = accepted_by_event(itel_simulator)
    assert set(accepted) == {r.event_id for r in records}
    assert all(len(requests) == 1 for requests in accepted.values())
    ledger = pipeline.sends_table()
    assert Counter(ledger["outcome"]) == {"rejected": 30, "accepted": 30}
    assert ledger.filter(pl.col("outcome") == "accepted")["event_id"].n_unique() == 30
    assert set(replay_log(pipeline)["outcome"]) == {"replayed"}
    assert replay_log(pipeline).height == 30
    successes = [json.loads(m.value()) for m in pipeline.consume_all(pipeline.api.success_topic)]
    assert sorted(s["event_id"] for s in successes) == sorted(r.event_id for r in records)
    materialized = [e.materialization for e in result.get_asset_materialization_events()]
    assert {m.asset_key.to_user_string() for m in materialized} == {"itel_api_sends"}
    assert sum(m.metadata["replayed_accepted"].value for m in materialized) == 30

    itel_simulator.clear_stats()
    assert summary(replay(pipeline, API))["error_records_selected"] == 0
    assert itel_simulator.stats()["total"] == 0  # nothing sent again
    assert len(pipeline.consume_all(pipeline.api.error_topic)) == 30


def test_api_replay_failing_again_is_dead_lettered_with_the_next_attempt(pipeline, itel_simulator):
    itel_simulator.set_faults(error_rate=1.0, error_status=400)
    records = list(generate_records(count=12, seed=63, days=1))
    pipeline.produce(records)
    pipeline.drain(API)
    first = error_records(pipeline, pipeline.api.error_topic)

    result = replay(pipeline, API)  # iTel still rejects: not an outage, the run succeeds
    assert summary(result)["failed_again"] == 12
    both = error_records(pipeline, pipeline.api.error_topic)
    again = [e for e in both if e["error_record"] not in {f["error_record"] for f in first}]
    assert len(again) == 12 and {e["attempt"] for e in again} == {2}
    assert {e["error_type"] for e in again} == {"itel_rejected"}
    log = replay_log(pipeline)
    assert set(log["outcome"]) == {"failed_again"} and set(log["new_attempt"]) == {2}
    assert set(log["error_record"]) == {e["error_record"] for e in first}

    itel_simulator.clear_faults()
    result = replay(pipeline, API)  # both generations of error records, one send per event
    accepted = accepted_by_event(itel_simulator)
    assert set(accepted) == {r.event_id for r in records}
    assert all(len(requests) == 1 for requests in accepted.values())
    replayed = replay_log(pipeline).filter(pl.col("outcome") == "replayed")
    assert set(replayed["error_record"]) == {e["error_record"] for e in both}
    assert summary(result)["succeeded"] == 12


def test_only_the_chosen_error_types_and_window_are_replayed(pipeline, delta_down):
    started = datetime.now(timezone.utc) - timedelta(seconds=1)
    records = list(generate_records(count=60, seed=64, days=1, bad_fraction=0.2))
    pipeline.produce(records)
    pipeline.drain(TRACKING)
    dead = error_records(pipeline, pipeline.tracking.error_topic)
    kinds = Counter(e["error_type"] for e in dead)
    assert kinds["delta_unavailable"] == 48 and sum(kinds.values()) == 60
    delta_down()

    # A window that ends before the outage holds nothing.
    before = replay(pipeline, TRACKING, to_time=(started - timedelta(hours=1)).isoformat())
    assert summary(before)["error_records_selected"] == 0

    # One error record by its offsets.
    [chosen] = [e for e in dead if e["error_type"] == "delta_unavailable"][:1]
    partition, offset = (int(x) for x in chosen["error_record"].rsplit(":", 2)[1:])
    replay(pipeline, TRACKING,
           offsets=[{"partition": partition, "from_offset": offset, "to_offset": offset + 1}])
    assert pipeline.tracking_table()["event_id"].to_list() == [chosen["event_id"]]

    # The rest of the delta_unavailable ones, by time; validate errors stay untouched.
    result = replay(pipeline, TRACKING, from_time=started.isoformat().replace("+00:00", "Z"),
                    error_types=["delta_unavailable"])
    assert summary(result)["error_records_selected"] == 47
    table = pipeline.tracking_table()
    valid = {r.event_id for r in records if r.bad_kind is None}
    assert table.height == 48 and set(table["event_id"]) == valid
    log = replay_log(pipeline)
    assert set(log["error_type"]) == {"delta_unavailable"} and log.height == 48
    assert len(error_records(pipeline, pipeline.tracking.error_topic)) == 60  # none re-dead-lettered
