"""Poison isolation end to end on the real broker: a record that makes every run of its range fail
(here: a stage that breaks on one event, as a bug would) is found by the sensor, dead-lettered
with stage `poison`, and its partition moves on; every other record is processed once."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from confluent_kafka import Producer

from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.ops import api_ops, tracking_ops
from itel_dagster.sensors.run_range_tags import ISOLATION_TAG
from itel_dagster.settings.workers import WORKERS_FILE

TRACKING = "itel_cabinet_tracking_worker"
API = "itel_cabinet_api_worker"


def _records(count: int, seed: int):
    """Valid records within one UTC day (today, from 00:15), so a run can hold them all."""
    midnight = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return [r for r in generate_records(count=count, seed=seed, days=0.01,
                                        now=midnight + timedelta(minutes=30))]


def produce_to_partition_0(pipeline, records) -> None:
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "acks": "all"})
    for r in records:
        producer.produce(pipeline.tracking.input_topic, key=r.key, value=r.value,
                         timestamp=r.timestamp_ms, partition=0)
    assert producer.flush(30) == 0


def _no_pauses(pipeline, worker: str) -> None:
    path = pipeline.root / "config" / WORKERS_FILE
    data = yaml.safe_load(path.read_text())
    data["workers"][worker].update(redispatch_pause_seconds=0)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _breaks_on(poison_event_id: str, stage):
    """`stage` wrapped to raise when the poison event is among its rows: a bug one record hits."""
    def broken(rows, *args, **kwargs):
        if poison_event_id in rows["event_id"].to_list():
            raise ValueError(f"cannot build the row of {poison_event_id}")
        return stage(rows, *args, **kwargs)
    return broken


@pytest.mark.parametrize("worker", [TRACKING, API])
def test_a_poison_record_is_dead_lettered_and_every_other_record_processed_once(
        pipeline, itel_simulator, monkeypatch, worker):
    _no_pauses(pipeline, worker)
    records = _records(90, seed=161)
    poison = records[47]
    if worker == TRACKING:
        monkeypatch.setattr(tracking_ops, "tracking_rows",
                            _breaks_on(poison.event_id, tracking_ops.tracking_rows))
    else:
        monkeypatch.setattr(api_ops, "with_payloads",
                            _breaks_on(poison.event_id, api_ops.with_payloads))
    pipeline.produce(records)

    results = pipeline.drain(worker)

    assert pipeline.lag(worker) == 0
    settings = pipeline.workers[worker]
    errors = [json.loads(m.value()) for m in pipeline.consume_all(settings.error_topic)]
    [dead] = errors
    assert (dead["event_id"], dead["stage"], dead["error_type"]) == \
        (poison.event_id, "poison", "poison_isolated")
    assert f"cannot build the row of {poison.event_id}" in dead["error_message"]
    assert json.loads(dead["original_payload"]) == json.loads(poison.value)
    others = {r.event_id for r in records} - {poison.event_id}
    if worker == TRACKING:
        rows = pipeline.tracking_table()
        assert sorted(rows["event_id"].to_list()) == sorted(others)
    else:
        sends = Counter(r["idempotency_key"] for r in itel_simulator.accepted_requests())
        assert set(sends) == others and set(sends.values()) == {1}
    successes = [json.loads(m.value()) for m in pipeline.consume_all(settings.success_topic)]
    assert sorted(s["event_id"] for s in successes) == sorted(others)
    # The search is visible on the runs: probes, then the one dead-letter run that succeeded.
    isolation = [r.dagster_run.tags.get(ISOLATION_TAG) for r in results]
    assert any(t and t.startswith("probe") for t in isolation)
    dead_letter_runs = [r for r in results
                        if (r.dagster_run.tags.get(ISOLATION_TAG) or "").startswith("dead-letter")]
    assert len(dead_letter_runs) == 1 and dead_letter_runs[0].success
    # A run that hangs instead of failing is failed by Dagster's run monitoring, then isolated.
    assert {r.dagster_run.tags["dagster/max_runtime"] for r in results} == \
        {str(settings.max_runtime_seconds)}
    failed_runs = [r for r in results if not r.success]
    # Two failures of the whole range, then about log2(90 / 3) failing probes at most.
    assert 2 <= len(failed_runs) <= 2 + 3 + 6
    log = (pipeline.root / "logs" / settings.log_file.split("/")[-1]).read_text()
    assert f"1 record(s) dead-lettered to {settings.error_topic} as poison" in log


def test_isolation_pauses_after_max_poison_per_hour_and_failing_ranges_go_stuck(
        pipeline, monkeypatch):
    path = pipeline.root / "config" / WORKERS_FILE
    data = yaml.safe_load(path.read_text())
    data["workers"][TRACKING].update(redispatch_pause_seconds=0, max_dispatch_attempts=3,
                                     max_poison_per_hour=1, isolate_after_failures=1)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    records = _records(24, seed=163)
    poisons = {records[5].event_id, records[18].event_id}
    stage = tracking_ops.tracking_rows

    def broken(rows, *args, **kwargs):
        if poisons & set(rows["event_id"].to_list()):
            raise ValueError("cannot build these rows")
        return stage(rows, *args, **kwargs)

    monkeypatch.setattr(tracking_ops, "tracking_rows", broken)
    produce_to_partition_0(pipeline, records)

    pipeline.drain(TRACKING)

    # One poison record dead-lettered; then isolation paused, and the other one's range is stuck.
    errors = [json.loads(m.value()) for m in pipeline.consume_all(pipeline.tracking.error_topic)]
    assert [e["stage"] for e in errors] == ["poison"] and errors[0]["event_id"] in poisons
    assert pipeline.lag(TRACKING) > 0
    skip = pipeline.tick(TRACKING).skip_reason.skip_message
    assert "STUCK partitions" in skip
    assert "poison isolation paused: 1 records dead-lettered as poison in the last hour" in skip
