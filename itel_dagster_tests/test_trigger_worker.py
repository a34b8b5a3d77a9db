"""The plugin trigger end to end: upstream ClaimX task events -> the trigger (a third worker from
the factory) -> itel.cabinet.task.tracking -> the tracking and API workers. Real broker, real
simulators, real Delta; each event of task 32513 once in Delta and once at iTel, whatever is
replayed or killed on the way."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest
from confluent_kafka import TopicPartition

from itel_dagster.crash_points import CRASH_POINTS_ENV, arm, fired
from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.devstack.publisher.upstream_events import upstream_records
from itel_dagster.kafka.offsets import group_consumer
from itel_dagster.metrics.exporter import pipeline_registry, render
from itel_dagster.settings.workers import KAFKA_PUBLISH, workers_with_final_stage
from itel_dagster_tests.fixtures.pipeline_fixtures import code_location

TRACKING = "itel_cabinet_tracking_worker"
API = "itel_cabinet_api_worker"
# Records of one UTC day (yesterday evening), so each drain is one run per tick.
YESTERDAY_EVENING = (datetime.now(timezone.utc) - timedelta(days=1)).replace(
    hour=20, minute=0, second=0, microsecond=0)


def _trigger():
    [trigger] = workers_with_final_stage(KAFKA_PUBLISH)
    return trigger


def _publish_upstream(pipeline, count: int, seed: int, bad_fraction: float = 0.0):
    records = list(upstream_records(
        generate_records(count, seed=seed, days=0.1, now=YESTERDAY_EVENING,
                         bad_fraction=bad_fraction), 0.4, seed=seed))
    pipeline.produce(records, topic=_trigger().input_topic)
    ours = {json.loads(r.value)["event_id"] for r in records
            if r.bad_kind is None and json.loads(r.value)["task_id"] == 32513}
    others = sum(1 for r in records
                 if r.bad_kind is None and json.loads(r.value)["task_id"] != 32513)
    return records, ours, others


def _forwarded(pipeline) -> Counter:
    """event_id -> copies on itel.cabinet.task.tracking, as a read_committed reader sees them."""
    return Counter(json.loads(m.value())["event_id"]
                   for m in pipeline.consume_all(_trigger().success_topic))


def _metadata(results) -> list[dict]:
    return [{k: v.value for k, v in event.materialization.metadata.items()}
            for r in results for event in r.get_asset_materialization_events()]


def _reset_group(pipeline, settings) -> None:
    """The trigger group's offsets back to 0 on every partition (a replayed upstream range)."""
    consumer = group_consumer(pipeline.bootstrap, settings.consumer_group)
    try:
        partitions = consumer.list_topics(settings.input_topic, timeout=10) \
            .topics[settings.input_topic].partitions
        consumer.commit(offsets=[TopicPartition(settings.input_topic, p, 0) for p in partitions],
                        asynchronous=False)
    finally:
        consumer.close()


def test_upstream_events_reach_delta_and_itel_once_other_tasks_skipped_and_counted(
        pipeline, itel_simulator):
    trigger = _trigger()
    assert trigger.success_topic == pipeline.tracking.input_topic == pipeline.api.input_topic
    records, ours, others = _publish_upstream(pipeline, 120, seed=20, bad_fraction=0.05)
    bad = sum(1 for r in records if r.bad_kind is not None)

    results = pipeline.drain(trigger.name)
    assert results and all(r.success for r in results)
    forwarded = _forwarded(pipeline)
    assert set(forwarded) == ours and set(forwarded.values()) == {1}
    # Keyed by assignment: one assignment's events in one partition, in their upstream order.
    messages = pipeline.consume_all(trigger.success_topic)
    partitions_of = {}
    for message in messages:
        event = json.loads(message.value())
        assert message.key() == str(event["assignment_id"]).encode()
        assert event["trigger_name"] == "iTel Cabinet Task Tracking"
        partitions_of.setdefault(event["assignment_id"], set()).add(message.partition())
    assert all(len(p) == 1 for p in partitions_of.values())

    # Other tasks' events are counted, not dead-lettered (the publisher's wrong_task_id record
    # is one more of another task); unreadable records are dead-lettered.
    wrong_task = sum(1 for r in records if r.bad_kind == "wrong_task_id")
    metadata = _metadata(results)
    assert sum(m.get("skipped_other_tasks", 0) for m in metadata) == others + wrong_task
    errors = [json.loads(m.value()) for m in pipeline.consume_all(trigger.error_topic)]
    assert {e["stage"] for e in errors} == {"select_task_events"}
    assert len(errors) == bad - wrong_task
    scrape = render(pipeline_registry(bootstrap_servers=lambda: pipeline.bootstrap))
    counted = {outcome: float(value) for outcome, value in re.findall(
        r'^itel_trigger_messages_processed_total\{outcome="(\w+)"\} (\S+)$', scrape, re.M)}
    assert counted == {"succeeded": len(ours), "failed": len(errors), "skipped": 0,
                       "not_selected": others + wrong_task}
    assert pipeline.lag(trigger.name) == 0
    ledger = pl.read_delta(str(pipeline.delta_root / trigger.table))
    assert set(ledger["event_id"].to_list()) == ours and ledger.height == len(ours)

    assert all(r.success for r in pipeline.drain(TRACKING))
    assert all(r.success for r in pipeline.drain(API))
    table = pipeline.tracking_table()
    assert sorted(table["event_id"].to_list()) == sorted(ours)
    accepted = Counter(r["idempotency_key"] for r in itel_simulator.accepted_requests())
    assert set(accepted) == ours and set(accepted.values()) == {1}


def test_a_replayed_upstream_range_publishes_no_second_copy(pipeline):
    trigger = _trigger()
    _, ours, _ = _publish_upstream(pipeline, 60, seed=21)
    first = pipeline.drain(trigger.name)
    assert first and all(r.success for r in first)

    _reset_group(pipeline, trigger)
    assert pipeline.lag(trigger.name) > 0
    again = pipeline.drain(trigger.name)
    assert again and all(r.success for r in again)  # the range was read and committed again
    assert pipeline.lag(trigger.name) == 0
    forwarded = _forwarded(pipeline)
    assert set(forwarded) == ours and set(forwarded.values()) == {1}
    assert sum(m.get("already_forwarded", 0) for m in _metadata(again)) == len(ours)


DRAIN_IN_A_PROCESS = textwrap.dedent("""
    import sys
    from pathlib import Path
    import dagster as dg
    from itel_dagster_tests.fixtures.pipeline_fixtures import Pipeline

    bootstrap, root, worker = sys.argv[1:4]
    with dg.DagsterInstance.ephemeral() as instance:
        Pipeline(bootstrap, Path(root), Path(root) / "delta", instance).drain(worker)
""")


@pytest.mark.slow
def test_a_trigger_run_killed_mid_transaction_publishes_nothing_then_each_event_once(
        pipeline, tmp_path):
    trigger = _trigger()
    _, ours, _ = _publish_upstream(pipeline, 60, seed=22)
    crash_file = tmp_path / "crash_points"
    arm(crash_file, trigger.name, "mid_publish")  # seed events in the log, uncommitted
    run = subprocess.run(
        [sys.executable, "-c", DRAIN_IN_A_PROCESS, pipeline.bootstrap, str(pipeline.root),
         trigger.name],
        env={**os.environ, CRASH_POINTS_ENV: str(crash_file)}, capture_output=True, text=True,
        timeout=240)
    assert run.returncode == -9, run.stderr[-3000:]
    assert fired(crash_file) == [f"{trigger.name}:mid_publish"]
    # The killed run recorded its forwards, published into a transaction that never committed.
    ledger = pl.read_delta(str(pipeline.delta_root / trigger.table))
    assert set(ledger["event_id"].to_list()) == ours
    assert not _forwarded(pipeline)
    assert set(pipeline.committed(trigger.name).values()) == {None}

    results = pipeline.drain(trigger.name)
    assert results and all(r.success for r in results)
    forwarded = _forwarded(pipeline)
    assert set(forwarded) == ours and set(forwarded.values()) == {1}
    assert sum(m.get("forwarded_again", 0) for m in _metadata(results)) == len(ours)
    assert pipeline.lag(trigger.name) == 0
    # And a replay after that (offsets reset) still publishes nothing more.
    _reset_group(pipeline, trigger)
    assert all(r.success for r in pipeline.drain(trigger.name))
    assert set(_forwarded(pipeline).values()) == {1}
    assert all(r.success for r in pipeline.drain(TRACKING))
    assert sorted(pipeline.tracking_table()["event_id"].to_list()) == sorted(ours)


def test_the_dead_letter_replay_refuses_the_triggers_error_records(pipeline):
    defs = code_location()  # the code location as loaded for this test's files
    from itel_dagster.jobs.dead_letter_replay import DEAD_LETTER_REPLAY_JOB

    trigger = _trigger()
    _publish_upstream(pipeline, 40, seed=23, bad_fraction=0.2)
    assert all(r.success for r in pipeline.drain(trigger.name))
    assert pipeline.consume_all(trigger.error_topic)  # there are error records to replay
    result = defs.resolve_job_def(DEAD_LETTER_REPLAY_JOB).execute_in_process(
        run_config={"ops": {"read_dead_letters": {"config": {"worker": trigger.name}}}},
        instance=pipeline.instance, raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "has no replay" in failure.step_failure_data.error.message
    # Nothing unshaped reached the workers' topic: only the trigger's seed events are there.
    assert all("trigger_name" in json.loads(m.value())
               for m in pipeline.consume_all(trigger.success_topic))



def test_the_demo_publishers_upstream_mode_feeds_the_trigger_and_the_workers(pipeline,
                                                                            itel_simulator):
    """`itel-dagster publish --upstream` (as `up` runs it): its ClaimX task events go through the
    trigger to both workers, the task's once each, the other tasks' nowhere."""
    from itel_dagster.devstack.publisher.publish import publish_events

    trigger = _trigger()
    summary = publish_events(pipeline.bootstrap, trigger.input_topic, count=40, days=0.05,
                             seed=24, progress=False, upstream=True, other_task_fraction=0.3)
    assert summary.total == 40
    upstream = [json.loads(m.value()) for m in pipeline.consume_all(trigger.input_topic)]
    others = {e["event_id"] for e in upstream if e["task_id"] != 32513}
    assert others and len(upstream) == 40
    assert all(r.success for r in pipeline.drain(trigger.name))
    forwarded = _forwarded(pipeline)
    assert forwarded and set(forwarded.values()) == {1} and not set(forwarded) & others
    assert all(r.success for r in pipeline.drain(TRACKING))
    assert all(r.success for r in pipeline.drain(API))
    assert sorted(pipeline.tracking_table()["event_id"].to_list()) == sorted(forwarded)
    accepted = Counter(r["idempotency_key"] for r in itel_simulator.accepted_requests())
    assert set(accepted) == set(forwarded) and set(accepted.values()) == {1}
