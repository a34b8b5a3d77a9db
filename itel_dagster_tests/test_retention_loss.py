"""Records Kafka deletes before a worker handled them are reported loudly, once: an ERROR line in
the worker's log, the metric, a webhook alert and a failing asset check; the worker commits past
them and goes on. Real broker (AdminClient.delete_records moves the log start as retention does).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.devstack.simulators.alert_receiver import AlertReceiver
from itel_dagster.kafka.offsets import group_progress
from itel_dagster.metrics.exporter import pipeline_registry, render
from itel_dagster.ops.retention_loss import lost_ranges
from itel_dagster.sensors.dispatch_plan import KafkaRange
from itel_dagster_tests.fixtures.pipeline_fixtures import code_location

TRACKING = "itel_cabinet_tracking_worker"
API = "itel_cabinet_api_worker"
CHECK = "no_records_lost_to_retention"
# Records of one UTC day, so each drain is one run: yesterday from 08:00 to 20:00.
YESTERDAY_EVENING = (datetime.now(timezone.utc) - timedelta(days=1)).replace(
    hour=20, minute=0, second=0, microsecond=0)


@pytest.fixture
def receiver(monkeypatch):
    with AlertReceiver() as server:
        monkeypatch.setenv("ALERT_WEBHOOK_URL", server.webhook_url)
        monkeypatch.setenv("ALERT_WEBHOOK_FORMAT", "generic")
        yield server


def lost_metric(worker: str) -> float:
    [value] = [s.value for family in text_string_to_metric_families(render(pipeline_registry()))
               for s in family.samples
               if s.name == "itel_records_lost_to_retention_total" and s.labels == {"worker": worker}]
    return value


def check_evaluation(pipeline, asset: str) -> dg.AssetCheckEvaluation:
    """The check alone, as its Execute button in the asset's Checks tab runs it."""
    defs = code_location()  # the code location as loaded for this test's files

    key = dg.AssetCheckKey(dg.AssetKey(asset), CHECK)
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_check_selection={key})
    [evaluation] = job.execute_in_process(instance=pipeline.instance).get_asset_check_evaluations()
    return evaluation


def test_records_deleted_before_the_group_handled_them_are_reported_once(pipeline, receiver):
    records = list(generate_records(count=40, seed=81, days=0.5, now=YESTERDAY_EVENING))
    pipeline.produce(records[:20])
    assert all(r.success for r in pipeline.drain(TRACKING))
    assert lost_metric(TRACKING) == 0
    pipeline.produce(records[20:])
    # Retention deletes the first new records of the partition with most of them, unhandled.
    topic = pipeline.tracking.input_topic
    progress = group_progress(pipeline.bootstrap, pipeline.tracking.consumer_group, topic)
    busiest = max(progress, key=lambda p: p.lag)
    first, lost = busiest.committed, min(3, busiest.lag)
    admin = AdminClient({"bootstrap.servers": pipeline.bootstrap})
    [deleted] = admin.delete_records([TopicPartition(topic, busiest.partition, first + lost)]).values()
    deleted.result(30)

    results = pipeline.drain(TRACKING)
    assert results and all(r.success for r in results)

    named = f"{topic}[{busiest.partition}] offsets {first} to {first + lost - 1} ({lost} records)"
    log = (pipeline.root / "logs" / "tracking_worker.log").read_text()
    [error] = [line for line in log.splitlines() if " ERROR " in line]
    assert f"{named} lost to retention" in error
    assert lost_metric(TRACKING) == lost and lost_metric(API) == 0
    [alert] = receiver.received()
    assert alert["kind"] == "records_lost_to_retention" and alert["severity"] == "error"
    assert alert["worker"] == TRACKING and alert["lost_offsets"] == [named]
    assert alert["link"].endswith(f"/runs/{results[0].run_id}")
    [metadata] = [e.materialization.metadata for r in results
                  for e in r.get_asset_materialization_events()]
    assert metadata["records_lost_to_retention"].value == lost

    evaluation = check_evaluation(pipeline, "itel_cabinet_task_tracking")
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert named in evaluation.description
    assert evaluation.metadata["records_lost"].value == lost

    # The worker went on past them: every other record in Delta once, nothing waiting.
    table = pipeline.tracking_table()
    assert table.height == table["event_id"].n_unique() == len(records) - lost
    assert pipeline.lag(TRACKING) == 0

    # The run again, as re-executed from the UI: refused (the group moved past its start), so
    # nothing is committed or reported twice.
    run = pipeline.instance.get_run_by_id(results[0].run_id)
    again = pipeline.execute(TRACKING, dg.RunRequest(
        run_config=run.run_config, partition_key=run.tags["dagster/partition"],
        tags={k: v for k, v in run.tags.items() if not k.startswith("dagster/")}))
    assert not again.success
    assert lost_metric(TRACKING) == lost and len(receiver.received()) == 1


def test_a_partition_whose_unhandled_records_all_expired_is_reported_and_committed(pipeline):
    records = list(generate_records(count=20, seed=82, days=0.5, now=YESTERDAY_EVENING))
    pipeline.produce(records[:10])
    assert all(r.success for r in pipeline.drain(TRACKING))
    pipeline.produce(records[10:])
    topic = pipeline.tracking.input_topic
    progress = group_progress(pipeline.bootstrap, pipeline.tracking.consumer_group, topic)
    busiest = max(progress, key=lambda p: p.lag)
    # Retention deletes every record the group has not handled, and nothing new arrives.
    admin = AdminClient({"bootstrap.servers": pipeline.bootstrap})
    [deleted] = admin.delete_records([TopicPartition(topic, busiest.partition, busiest.high)]).values()
    deleted.result(30)

    results = pipeline.drain(TRACKING)

    assert results and all(r.success for r in results)
    assert pipeline.committed(TRACKING)[busiest.partition] == busiest.high
    named = (f"{topic}[{busiest.partition}] offsets {busiest.committed} to {busiest.high - 1} "
             f"({busiest.lag} records)")
    log = (pipeline.root / "logs" / "tracking_worker.log").read_text()
    assert f"{named} lost to retention" in log
    assert pipeline.drain(TRACKING) == []  # reported once, nothing more to do


def test_lost_ranges_start_where_the_group_stands():
    ranges = [KafkaRange("t", 0, 10, 50), KafkaRange("t", 1, 30, 40), KafkaRange("t", 2, 5, 9)]
    # p0: the sensor started at the log start (10), the group stood at 4. p1: retention moved
    # the log start to 33 after the sensor planned 30. p2: a group that never committed.
    found = lost_ranges(ranges, {0: 10, 1: 33, 2: 7}, {0: 4, 1: 30, 2: None})
    assert found == (KafkaRange("t", 0, 4, 10), KafkaRange("t", 1, 30, 33),
                     KafkaRange("t", 2, 5, 7))
    # Nothing lost: the group at the range's start, or already past the log start (a re-run).
    assert lost_ranges(ranges[:1], {0: 10}, {0: 10}) == ()
    assert lost_ranges(ranges[:1], {0: 12}, {0: 40}) == ()
