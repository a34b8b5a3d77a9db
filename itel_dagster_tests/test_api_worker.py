"""The API worker end to end: real broker, ClaimX and iTel simulators, Delta ledger, Dagster runs."""

from __future__ import annotations

import json
import time
from collections import defaultdict

import polars as pl

from itel_dagster.devstack.claimx_world import claimx_task
from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.devstack.simulators.itel import token_sha256
from itel_dagster_tests.fixtures.record_copies import (
    drain_a_copy_across_midnight,
    drain_with_a_retried_copy,
)

API = "itel_cabinet_api_worker"
TRACKING = "itel_cabinet_tracking_worker"


def seed_payload(event: dict) -> dict:
    task = claimx_task(event["assignment_id"])
    return {
        "task_id": event["task_id"], "assignment_id": event["assignment_id"],
        "project_id": event["project_id"], "task_status": event["task_status"],
        "repair_details": {"cabinet_id": task["custom_fields"]["cabinet_id"],
                           "technician_notes": task["notes"]},
        "source_system": "claimx",
    }


def accepted_by_event(itel) -> dict[str, list[dict]]:
    by_event = defaultdict(list)
    for record in itel.accepted_requests():
        by_event[record["idempotency_key"]].append(record)
    return by_event


def test_five_hundred_events_each_accepted_once_in_order(pipeline, itel_simulator):
    records = list(generate_records(count=500, seed=51, bad_fraction=0.06, days=2))
    pipeline.produce(records)
    results = pipeline.drain(API)
    assert results and all(r.success for r in results)

    valid = {r.event_id: json.loads(r.value) for r in records if r.bad_kind is None}
    accepted = accepted_by_event(itel_simulator)
    assert set(accepted) == set(valid)
    assert all(len(requests) == 1 for requests in accepted.values())
    for event_id, [request] in accepted.items():
        assert request["body"] == seed_payload(valid[event_id])
        assert request["auth_token_sha256"] == token_sha256(itel_simulator.token)
    # Per-assignment order: the simulator received each assignment's events in offset order.
    offsets = {r.event_id: i for i, r in enumerate(records)}
    per_assignment = defaultdict(list)
    for record in itel_simulator.accepted_requests():
        per_assignment[record["body"]["assignment_id"]].append(offsets[record["idempotency_key"]])
    assert all(seq == sorted(seq) for seq in per_assignment.values())

    errors = [json.loads(m.value()) for m in pipeline.consume_all(pipeline.api.error_topic)]
    assert len(errors) == len(records) - len(valid)
    assert {e["stage"] for e in errors} == {"validate"}
    successes = [json.loads(m.value()) for m in pipeline.consume_all(pipeline.api.success_topic)]
    assert sorted(s["event_id"] for s in successes) == sorted(valid)
    assert all(s["status_code"] == 201 and s["itel_id"].startswith("ITEL-") for s in successes)

    ledger = pipeline.sends_table()
    assert ledger.filter(pl.col("outcome") == "accepted").height == len(valid)
    assert ledger["event_id"].n_unique() == ledger.height
    assert pipeline.lag(API) == 0
    assert set(pipeline.committed(TRACKING).values()) == {None}
    metadata = [event.materialization.metadata for r in results
                for event in r.get_asset_materialization_events()]
    assert sum(m["accepted"].value for m in metadata if "accepted" in m) == len(valid)
    assert all(m["breaker_state"].value == "closed" for m in metadata if "breaker_state" in m)
    assert any("latency_p95_ms" in m for m in metadata)

    # Replaying the same records (a re-delivered range) sends nothing again.
    for result in results[:2]:
        pipeline.execute(API, _request_of(result))
    assert sum(len(v) for v in accepted_by_event(itel_simulator).values()) == len(valid)
    log = (pipeline.root / "logs" / "api_worker.log").read_text()
    # The ledger answers: nothing is sent again (the commit then refuses the stale range).
    assert "from the send ledger, not sent again" in log


def _request_of(result):
    import dagster as dg

    run = result.dagster_run
    return dg.RunRequest(run_config=run.run_config, tags=run.tags,
                         partition_key=run.tags.get("dagster/partition"))


def test_503_burst_then_recovery_everything_accepted_once_with_retries_in_ledger(
        pipeline, itel_simulator):
    itel_simulator.set_faults(burst_5xx=2)  # below the test breaker threshold (3)
    records = list(generate_records(count=40, seed=52, days=1))
    pipeline.produce(records)
    assert all(r.success for r in pipeline.drain(API))
    accepted = accepted_by_event(itel_simulator)
    assert set(accepted) == {r.event_id for r in records}
    assert all(len(v) == 1 for v in accepted.values())
    ledger = pipeline.sends_table()
    retried = ledger.filter(pl.col("attempts") > 1)
    assert retried.height >= 1
    assert retried["attempt_log"].str.contains("503").all()


def test_429_retry_after_is_honoured(pipeline, itel_simulator):
    itel_simulator.set_faults(rate_limited=1, retry_after_seconds=2)
    records = list(generate_records(count=1, seed=53, days=1))
    pipeline.produce(records)
    pipeline.drain(API)
    [row] = pipeline.sends_table().rows(named=True)
    assert row["outcome"] == "accepted" and row["attempts"] == 2
    assert row["latency_ms"] >= 2000
    assert "429" in row["attempt_log"]


def test_rejected_events_are_dead_lettered_at_once_and_the_rest_flow(pipeline, itel_simulator):
    # A contract where unknown assignments (ClaimX 404) have no project: iTel answers 422.
    template = {"task_id": "event.task_id", "assignment_id": "event.assignment_id",
                "project_id": "claimx.project_id", "task_status": "event.task_status",
                "repair_details": {"cabinet_id": "claimx.custom_fields.cabinet_id",
                                   "technician_notes": "claimx.notes"},
                "source_system": "=claimx"}
    pipeline.set_itel(payload=template)
    records = list(generate_records(count=60, seed=54, days=1, unknown_fraction=0.4))
    pipeline.produce(records)
    assert all(r.success for r in pipeline.drain(API))
    unknown = {r.event_id for r in records if json.loads(r.value)["assignment_id"] >= 9_000_000}
    assert unknown
    errors = [json.loads(m.value()) for m in pipeline.consume_all(pipeline.api.error_topic)]
    assert {e["event_id"] for e in errors} == unknown
    assert {e["error_type"] for e in errors} == {"itel_rejected"}
    assert all("HTTP 422 after 1 attempt" in e["error_message"] for e in errors)
    assert set(accepted_by_event(itel_simulator)) == {r.event_id for r in records} - unknown


def test_open_breaker_holds_events_in_kafka_then_sends_them_once(pipeline, itel_simulator):
    # A long cool-down, so the checks below run while the breaker is certainly open.
    pipeline.set_itel(circuit_breaker={"failure_threshold": 3, "cool_down_seconds": 120})
    itel_simulator.set_faults(error_rate=1.0, error_status=503)
    records = list(generate_records(count=30, seed=55, days=1))
    pipeline.produce(records)
    results = pipeline.drain(API)
    assert results and all(r.success for r in results)  # holding back is not a failure
    assert pipeline.consume_all(pipeline.api.error_topic) == []  # nothing dead-lettered
    assert pipeline.lag(API) == 30  # everything waits in Kafka
    itel_simulator.clear_stats()
    tick = pipeline.tick(API)
    assert not tick.run_requests and "circuit breaker open" in tick.skip_reason.skip_message
    assert itel_simulator.stats()["total"] == 0  # no requests during the cool-down

    # iTel recovers; the cool-down ends (read from the config at each check).
    itel_simulator.clear_faults()
    pipeline.set_itel(circuit_breaker={"failure_threshold": 3, "cool_down_seconds": 0.2})
    time.sleep(0.3)
    assert all(r.success for r in pipeline.drain(API))
    accepted = accepted_by_event(itel_simulator)
    assert set(accepted) == {r.event_id for r in records}
    assert all(len(v) == 1 for v in accepted.values())
    assert pipeline.lag(API) == 0


def test_workers_are_isolated_both_ways(pipeline, itel_simulator):
    # iTel down: tracking rows keep landing.
    itel_simulator.set_faults(refuse_for_seconds=300)  # ended by clear_faults() below
    first = list(generate_records(count=30, seed=56, days=1))
    pipeline.produce(first)
    assert all(r.success for r in pipeline.drain(TRACKING))
    assert set(pipeline.tracking_table()["event_id"]) == {r.event_id for r in first}
    pipeline.drain(API)
    assert pipeline.lag(API) == 30 and pipeline.lag(TRACKING) == 0
    itel_simulator.clear_faults()

    # The tracking table unwritable (a file where its folder should be): iTel sends keep landing.
    table = pipeline.delta_root / "itel_cabinet_task_tracking"
    table.rename(pipeline.root / "tracking_table_aside")
    table.write_text("not a directory")
    second = list(generate_records(count=20, seed=57, days=1))
    pipeline.produce(second)
    tracking_runs = pipeline.drain(TRACKING)
    assert tracking_runs and not any(r.success for r in tracking_runs)
    # End the breaker's cool-down from the outage above (read from the config at each check).
    pipeline.set_itel(circuit_breaker={"failure_threshold": 3, "cool_down_seconds": 0.2})
    time.sleep(0.3)
    assert all(r.success for r in pipeline.drain(API))
    assert set(accepted_by_event(itel_simulator)) == {r.event_id for r in first + second}
    assert pipeline.lag(API) == 0


def _oauth_requests(itel) -> int:
    route = itel.stats()["routes"].get("POST /oauth/token", {})
    return route.get("total", 0)


def test_oauth2_token_fetched_once_reused_and_refreshed(pipeline, itel_simulator):
    pipeline.set_itel(auth_type="oauth2_client_credentials", auth_token=None, oauth2={
        "token_url": f"{itel_simulator.url}/oauth/token",
        "client_id": itel_simulator.client_id, "client_secret": itel_simulator.client_secret})
    first = list(generate_records(count=30, seed=58, days=1))
    pipeline.produce(first)
    runs = pipeline.drain(API)
    assert runs and all(r.success for r in runs)
    assert set(accepted_by_event(itel_simulator)) == {r.event_id for r in first}
    assert all(r["auth_via"] == "oauth2_access_token" for r in itel_simulator.accepted_requests())
    assert _oauth_requests(itel_simulator) == len(runs)  # one token per run process, reused

    itel_simulator.expire_tokens()
    second = list(generate_records(count=10, seed=59, days=1))
    pipeline.produce(second)
    assert all(r.success for r in pipeline.drain(API))
    assert set(accepted_by_event(itel_simulator)) == {r.event_id for r in first + second}


def test_batch_mode_sends_up_to_fifty_per_request(pipeline, itel_simulator):
    pipeline.set_itel(batch={"enabled": True, "endpoint": "/api/v1/tasks/batch", "size": 50})
    records = list(generate_records(count=150, seed=60, days=1, bad_fraction=0.04))
    pipeline.produce(records)
    assert all(r.success for r in pipeline.drain(API))
    valid = {r.event_id for r in records if r.bad_kind is None}
    accepted = accepted_by_event(itel_simulator)
    assert set(accepted) == valid and all(len(v) == 1 for v in accepted.values())
    assert all(v[0]["via"] == "batch" for v in accepted.values())
    routes = itel_simulator.stats()["routes"]
    batch_requests = routes["POST /api/v1/tasks/batch"]["total"]
    assert batch_requests < len(valid) / 2
    assert "POST /api/v1/tasks" not in routes
    ledger = pipeline.sends_table()
    assert ledger.filter(pl.col("outcome") == "accepted").height == len(valid)


def test_same_event_twice_in_one_run_is_sent_once_and_committed(pipeline, itel_simulator):
    records, twice, metadata = drain_with_a_retried_copy(pipeline, API, seed=61)
    accepted = accepted_by_event(itel_simulator)
    assert set(accepted) == {r.event_id for r in records}
    assert all(len(v) == 1 for v in accepted.values())
    ledger = pipeline.sends_table()
    assert ledger.height == len(records) == ledger["event_id"].n_unique()
    assert sum(m["already_handled"].value for m in metadata) == 1

    # Published again later (another run): the ledger already holds it, nothing is sent.
    pipeline.produce([twice])
    assert all(r.success for r in pipeline.drain(API))
    assert len(accepted_by_event(itel_simulator)[twice.event_id]) == 1
    assert pipeline.lag(API) == 0


def test_a_copy_redelivered_across_midnight_is_not_sent_again(pipeline, itel_simulator):
    record = drain_a_copy_across_midnight(pipeline, API, seed=62)
    assert len(accepted_by_event(itel_simulator)[record.event_id]) == 1
    assert itel_simulator.stats()["total"] == 1
    assert pipeline.sends_table()["event_id"].to_list() == [record.event_id]


def test_claimx_down_sends_cabinet_and_notes_from_an_event_task_in_claimx_shape(
        pipeline, claimx_simulator, itel_simulator):
    claimx_simulator.set_faults(error_rate=1.0, error_status=503)
    records = []
    for record in generate_records(count=3, seed=63, days=1):
        event = json.loads(record.value)
        task = claimx_task(event["assignment_id"])  # ClaimX's shape: no flat cabinet_id / notes
        task["custom_fields"]["cabinet_id"] = f"EVT-{event['event_id'][:6]}"
        task["notes"] = f"notes of {event['event_id']}"
        records.append(record._replace(value=json.dumps({**event, "task": task}).encode()))
    pipeline.produce(records)
    assert all(r.success for r in pipeline.drain(API))
    accepted = accepted_by_event(itel_simulator)
    assert set(accepted) == {r.event_id for r in records}
    for event_id, [request] in accepted.items():
        assert request["body"]["repair_details"] == {
            "cabinet_id": f"EVT-{event_id[:6]}", "technician_notes": f"notes of {event_id}"}
    assert pipeline.lag(API) == 0
