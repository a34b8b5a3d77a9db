"""The API worker's send ledger written round by round, and a re-run after a crash between the
ledger and the commit: real broker, iTel simulator, Delta ledger (issue 17, item 1)."""

from __future__ import annotations

import json
import math
import time
from collections import Counter, defaultdict

import dagster as dg
import polars as pl

from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.resources.delta_tables import DeltaTableWriter
from itel_dagster.resources.itel_api import ItelApiResource, breaker_for
from itel_dagster.resources.kafka import KafkaResource
from itel_dagster.settings.connections import load_itel_connection

API = "itel_cabinet_api_worker"
ROUND = 8  # send_round_size, as each test sets it


def _request_of(result: dg.ExecuteInProcessResult) -> dg.RunRequest:
    run = result.dagster_run
    return dg.RunRequest(run_config=run.run_config, tags=run.tags,
                         partition_key=run.tags.get("dagster/partition"))


def _ledger_writes(monkeypatch, fail_past_rows: int | None = None) -> list[int]:
    """Rows of each ledger MERGE call; with fail_past_rows, the call that would bring the ledger
    past that many rows fails the run before it merges (a crash after a POST round, before its
    ledger rows), without op retries."""
    calls: list[int] = []
    merge = DeltaTableWriter.merge_new_rows

    def counted(self, rows, **options):
        if self.uri.endswith("itel_api_sends"):
            if fail_past_rows is not None and sum(calls) + rows.height > fail_past_rows:
                raise dg.Failure("killed before the ledger write", allow_retries=False)
            calls.append(rows.height)
        return merge(self, rows, **options)

    monkeypatch.setattr(DeltaTableWriter, "merge_new_rows", counted)
    return calls


def _one_run(count: int, seed: int, **kinds) -> list:
    """`count` records of one day under one Kafka key: one partition and one day partition, so
    one run reads them all."""
    by_day = defaultdict(list)
    for record in generate_records(count=count * 3, seed=seed, days=1, **kinds):
        by_day[record.timestamp_ms // 86_400_000].append(record._replace(key=b"one-run"))
    records = max(by_day.values(), key=len)[:count]
    assert len(records) == count
    return records


def _posts(itel) -> Counter:
    """POSTs per accepted Idempotency-Key (the simulator keeps one record per key)."""
    return Counter({r["idempotency_key"]: r["requests"] for r in itel.accepted_requests()})


def _successes(pipeline) -> list[str]:
    return [json.loads(m.value())["event_id"]
            for m in pipeline.consume_all(pipeline.api.success_topic)]


def test_each_round_is_in_the_ledger_before_the_next_is_sent(pipeline, itel_simulator,
                                                              monkeypatch):
    pipeline.set_itel(max_concurrency=2, send_round_size=ROUND)
    records = list(generate_records(count=30, seed=171, days=1))
    pipeline.produce(records)
    writes = _ledger_writes(monkeypatch)
    results = pipeline.drain(API)
    assert results and all(r.success for r in results)
    metadata = [e.materialization.metadata for r in results
                for e in r.get_asset_materialization_events()]
    rounds = [math.ceil(m["records"].value / ROUND) for m in metadata]  # every record valid
    assert len(writes) == sum(rounds) >= 4  # one MERGE (one day) per round of at most 8 events
    assert all(n <= ROUND for n in writes) and sum(writes) == len(records)
    assert [m["send_rounds"].value for m in metadata] == rounds
    # Rounds keep each assignment's events in Kafka order.
    offsets = {r.event_id: i for i, r in enumerate(records)}
    per_assignment = defaultdict(list)
    for request in itel_simulator.accepted_requests():
        per_assignment[request["body"]["assignment_id"]].append(
            offsets[request["idempotency_key"]])
    assert all(seq == sorted(seq) for seq in per_assignment.values())
    assert set(_posts(itel_simulator).values()) == {1}
    assert sorted(_successes(pipeline)) == sorted(offsets)
    assert pipeline.lag(API) == 0


def test_a_run_killed_after_a_post_round_re_sends_at_most_that_round(pipeline, itel_simulator,
                                                                      monkeypatch):
    pipeline.set_itel(max_concurrency=2, send_round_size=ROUND)
    records = _one_run(30, seed=172)
    pipeline.produce(records)
    # Rounds 1 and 2 reach the ledger; round 3 is POSTed and the run dies before its MERGE.
    with monkeypatch.context() as patch:
        _ledger_writes(patch, fail_past_rows=2 * ROUND)
        [request] = pipeline.tick(API).run_requests
        killed = pipeline.execute(API, request)
    assert not killed.success
    assert pipeline.sends_table().height == 2 * ROUND

    assert pipeline.execute(API, _request_of(killed)).success  # the range's next run
    pipeline.drain(API)
    posts = _posts(itel_simulator)
    assert set(posts) == {r.event_id for r in records}
    assert sum(n - 1 for n in posts.values()) <= ROUND  # at most the killed round again
    successes = _successes(pipeline)
    assert sorted(successes) == sorted(posts)  # each accepted event's record, once
    ledger = pipeline.sends_table()
    assert ledger.filter(pl.col("outcome") == "accepted")["event_id"].n_unique() == ledger.height
    assert ledger.height == len(records)
    assert pipeline.lag(API) == 0


def test_a_re_run_publishes_the_results_its_dead_predecessor_only_recorded(
        pipeline, itel_simulator, monkeypatch):
    # Unknown assignments get no project from ClaimX: iTel answers 422 (rejected).
    template = {"task_id": "event.task_id", "assignment_id": "event.assignment_id",
                "project_id": "claimx.project_id", "task_status": "event.task_status",
                "repair_details": {"cabinet_id": "claimx.custom_fields.cabinet_id",
                                   "technician_notes": "claimx.notes"},
                "source_system": "=claimx"}
    pipeline.set_itel(payload=template, max_concurrency=2, send_round_size=ROUND)
    records = _one_run(24, seed=173, unknown_fraction=0.3)
    unknown = {r.event_id for r in records if json.loads(r.value)["assignment_id"] >= 9_000_000}
    assert unknown
    pipeline.produce(records)

    def dead_producer(self, transactional_id, client_id):
        raise dg.Failure("killed before publishing", allow_retries=False)

    # Every send and ledger row is done; the run dies before publishing and committing.
    with monkeypatch.context() as patch:
        patch.setattr(KafkaResource, "results_transaction", dead_producer)
        [request] = pipeline.tick(API).run_requests
        killed = pipeline.execute(API, request)
    assert not killed.success
    assert pipeline.sends_table().height == len(records)

    rerun = pipeline.execute(API, _request_of(killed))
    assert rerun.success
    assert set(_posts(itel_simulator).values()) == {1}  # nothing sent again
    assert sorted(_successes(pipeline)) == sorted({r.event_id for r in records} - unknown)
    errors = [json.loads(m.value()) for m in pipeline.consume_all(pipeline.api.error_topic)]
    assert sorted(e["event_id"] for e in errors) == sorted(unknown)
    assert all("HTTP 422 after 1 attempt" in e["error_message"] for e in errors)
    [metadata] = [e.materialization.metadata for e in rerun.get_asset_materialization_events()]
    assert metadata["recovered_from_ledger"].value == len(records)
    assert metadata["sent"].value == 0
    assert pipeline.lag(API) == 0


def test_sends_past_the_commit_point_are_published_once_by_the_run_that_commits_them(
        pipeline, itel_simulator, monkeypatch):
    pipeline.set_itel(max_concurrency=2, send_round_size=ROUND)
    records = _one_run(24, seed=174)
    pipeline.produce(records)
    breaker = breaker_for(load_itel_connection())
    send_rows = ItelApiResource.send_rows
    rounds: list[int] = []

    def breaker_opens_after_round_two(self, rows):
        rounds.append(rows.height)
        if len(rounds) == 3:  # iTel fails between the rounds: round 3 is held back
            breaker.hold_open(time.time() + 60, "test: iTel down")
            # The run's breaker sees a change made by another process (here: another breaker
            # object) within its closed_recheck_seconds; it saw the breaker closed in round 2.
            time.sleep(2 * breaker.closed_recheck_seconds)
        return send_rows(self, rows)

    with monkeypatch.context() as patch:
        patch.setattr(ItelApiResource, "send_rows", breaker_opens_after_round_two)
        [request] = pipeline.tick(API).run_requests
        first = pipeline.execute(API, request)
    assert first.success and len(rounds) == 3
    [metadata] = [e.materialization.metadata for e in first.get_asset_materialization_events()]
    # Rounds 1-2 took each assignment's first event; round 3 holds second events of earlier
    # offsets: accepted events lie past the first held-back offset.
    assert metadata["accepted"].value == 2 * ROUND and metadata["awaiting_commit"].value > 0
    [committed] = [o for o in pipeline.committed(API).values() if o is not None]
    offsets = {r.event_id: i for i, r in enumerate(records)}
    published = _successes(pipeline)
    assert published and all(offsets[e] < committed for e in published)

    breaker.close()
    assert all(r.success for r in pipeline.drain(API))
    assert set(_posts(itel_simulator).values()) == {1}
    assert sorted(_successes(pipeline)) == sorted(offsets)  # each once
    assert pipeline.lag(API) == 0
