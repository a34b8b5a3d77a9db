"""Result records and offsets in one Kafka transaction: read_committed readers see a run's records
once, exactly when its offsets are committed; a newer run of the lane fences a zombie at the
broker; a transaction a dead run left open is aborted by the next run of its lane.
Real broker, real processes for the dead run, both workers' runs as the sensor dispatches them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

import itel_dagster.ops.results_ops as results_ops
from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.kafka.offsets import group_progress
from itel_dagster.kafka.results_transaction import Fenced, ResultsTransaction, transactional_id

TRACKING = "itel_cabinet_tracking_worker"
API = "itel_cabinet_api_worker"
YESTERDAY_EVENING = (datetime.now(timezone.utc) - timedelta(days=1)).replace(
    hour=20, minute=0, second=0, microsecond=0)


def read(bootstrap: str, topic: str, isolation: str = "read_committed",
         timeout: float = 10.0) -> list[bytes]:
    """Every value of the topic as a reader of `isolation` sees it, read to each partition's end."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "isolation.level": isolation})
    values: list[bytes] = []
    try:
        for partition in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
            consumer.assign([TopicPartition(topic, partition, 0)])
            while True:
                message = consumer.poll(timeout)
                assert message is not None, f"{topic}[{partition}]: no end within {timeout} s"
                if message.error():
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        break
                    continue
                values.append(message.value())
    finally:
        consumer.close()
    return values


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    return {p.partition: p.committed for p in group_progress(bootstrap, group, topic)}


def test_the_transactional_id_names_the_group_the_topic_and_the_lanes():
    assert transactional_id("g", "t", {2, 0}) == "itel-dagster.g.t.lane-0-2"
    assert transactional_id("g", "t", {1}) != transactional_id("h", "t", {1})


def test_a_newer_run_of_the_lane_fences_a_zombie_which_then_commits_nothing(
        kafka_bootstrap, make_topic):
    results, source, group = make_topic(1), make_topic(1), f"group-{uuid.uuid4().hex[:8]}"
    txn_id = transactional_id(group, source, {0})
    zombie = ResultsTransaction(kafka_bootstrap, txn_id, client_id="zombie")
    zombie.begin()
    zombie.send(results, [(b"k", b"zombie")])
    zombie.flush()  # in the log, not committed

    successor = ResultsTransaction(kafka_bootstrap, txn_id, client_id="successor")
    successor.begin()
    successor.send(results, [(b"k", b"successor")])
    successor.commit(group, source, {0: 5})

    with pytest.raises(Fenced, match="taken over by a newer run"):
        zombie.send(results, [(b"k", b"zombie-late")])
        zombie.commit(group, source, {0: 9})
    assert read(kafka_bootstrap, results) == [b"successor"]
    assert b"zombie" in read(kafka_bootstrap, results, "read_uncommitted")  # it was in the log
    assert committed(kafka_bootstrap, group, source) == {0: 5}


DEAD_RUN = textwrap.dedent("""
    import sys, time
    from itel_dagster.kafka.results_transaction import ResultsTransaction
    bootstrap, txn_id, topic = sys.argv[1:4]
    run = ResultsTransaction(bootstrap, txn_id, client_id="dead-run")
    run.begin()
    run.send(topic, [(b"k", b"dead")])
    run.flush()
    print("open", flush=True)
    time.sleep(600)
""")


def test_the_next_run_of_the_lane_aborts_the_transaction_a_killed_run_left_open(
        kafka_bootstrap, make_topic):
    results, source, group = make_topic(1), make_topic(1), f"group-{uuid.uuid4().hex[:8]}"
    txn_id = transactional_id(group, source, {0})
    dead = subprocess.Popen([sys.executable, "-c", DEAD_RUN, kafka_bootstrap, txn_id, results],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert dead.stdout.readline().strip() == "open"
    finally:
        dead.send_signal(signal.SIGKILL)
        dead.wait(30)
    started = time.monotonic()
    successor = ResultsTransaction(kafka_bootstrap, txn_id, client_id="successor")
    successor.begin()
    successor.send(results, [(b"k", b"successor")])
    successor.commit(group, source, {0: 3})
    # The open transaction would hold read_committed readers back for transaction.timeout.ms
    # (60 s); taken over, it is aborted at once and the reader gets to the end within 10 s.
    assert read(kafka_bootstrap, results, timeout=10) == [b"successor"]
    assert time.monotonic() - started < 30
    assert committed(kafka_bootstrap, group, source) == {0: 3}


@pytest.mark.parametrize("worker", [TRACKING, API])
def test_a_publish_that_fails_midway_leaves_nothing_visible_and_its_retry_publishes_once(
        pipeline, worker, monkeypatch):
    records = list(generate_records(count=20, seed=181, days=0.3, bad_fraction=0.3,
                                    now=YESTERDAY_EVENING))
    pipeline.produce(records)
    real = results_ops.error_record_messages
    calls = Counter()

    def fails_once(*args, **kwargs):
        calls["error_records"] += 1
        if calls["error_records"] == 1:
            raise RuntimeError("broken midway through the error records")
        return real(*args, **kwargs)

    monkeypatch.setattr(results_ops, "error_record_messages", fails_once)
    [request] = pipeline.tick(worker).run_requests
    result = pipeline.execute(worker, request)
    assert result.success  # the op's retry
    settings = pipeline.workers[worker]
    successes = read(pipeline.bootstrap, settings.success_topic)
    errors = read(pipeline.bootstrap, settings.error_topic)
    valid = sum(1 for r in records if r.bad_kind is None)
    assert len(successes) == valid == len({json.loads(v)["event_id"] for v in successes})
    assert len(errors) == len(records) - valid
    # The first attempt's success records reached the log, aborted: invisible to read_committed.
    assert len(read(pipeline.bootstrap, settings.success_topic, "read_uncommitted")) == 2 * valid
    assert pipeline.lag(worker) == 0


def test_an_op_retry_after_a_commit_that_reached_the_broker_but_raised_succeeds_once(
        pipeline, monkeypatch):
    records = list(generate_records(count=10, seed=182, days=0.3, now=YESTERDAY_EVENING))
    pipeline.produce(records)
    real = ResultsTransaction.commit
    calls = Counter()

    def commits_then_raises(self, *args, **kwargs):
        real(self, *args, **kwargs)
        calls["commit"] += 1
        if calls["commit"] == 1:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "reply lost"))

    monkeypatch.setattr(ResultsTransaction, "commit", commits_then_raises)
    [request] = pipeline.tick(TRACKING).run_requests
    result = pipeline.execute(TRACKING, request)
    assert result.success
    [metadata] = [e.materialization.metadata for e in result.get_asset_materialization_events()]
    assert metadata["already_committed"].value is True
    assert calls["commit"] == 1  # the retry found its commit and published nothing
    assert len(read(pipeline.bootstrap, pipeline.tracking.success_topic)) == len(records)
    assert pipeline.lag(TRACKING) == 0
