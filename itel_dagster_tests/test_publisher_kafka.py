"""The publisher against the real broker: what lands on the topic, where, in what order."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime

import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, TopicPartition

from itel_dagster.cli import main
from itel_dagster.devstack.publisher.bad_records import BAD_KINDS
from itel_dagster.devstack.publisher.events import STATUS_STEPS
from itel_dagster.devstack.publisher.publish import PublishError, publish_events

STATUS_ORDER = [step.status for step in STATUS_STEPS]


@dataclass(frozen=True)
class Consumed:
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes
    value: bytes
    headers: dict[str, bytes]


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list[Consumed]:
    """Every record of the topic, read from the start of each partition without a group."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "publisher-test-reader",  # never commits
        "enable.auto.commit": False,
    })
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        consumed: list[Consumed] = []
        deadline = time.monotonic() + timeout
        while len(consumed) < expected and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=1.0):
                assert message.error() is None, message.error()
                consumed.append(Consumed(
                    message.partition(), message.offset(), message.timestamp()[1],
                    message.key(), message.value(), dict(message.headers() or []),
                ))
        return consumed
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def published_600(kafka_bootstrap):
    """600 records, a tenth of them bad, on a fresh 3-partition topic, and what came back."""
    from itel_dagster.devstack.kafka.topics import ensure_topics

    topic = f"test.publisher.{time.time_ns()}"
    ensure_topics(kafka_bootstrap, {topic: "input"}, partitions=3)
    summary = publish_events(kafka_bootstrap, topic, 600, bad_fraction=0.1, seed=11,
                             progress=False)
    return summary, consume_all(kafka_bootstrap, topic, 600)


def test_every_record_lands_and_the_summary_says_so(published_600):
    summary, consumed = published_600
    assert len(consumed) == summary.total == 600
    assert (summary.valid, summary.bad) == (540, 60)
    assert summary.per_partition == dict(Counter(r.partition for r in consumed))
    assert len(summary.per_partition) == 3
    stamps = [r.timestamp_ms for r in consumed]
    assert (summary.first_timestamp_ms, summary.last_timestamp_ms) == (min(stamps), max(stamps))


def test_bad_records_on_the_topic_counted_by_header(published_600):
    summary, consumed = published_600
    on_topic = Counter(r.headers["itel_bad_kind"].decode() for r in consumed
                       if "itel_bad_kind" in r.headers)
    assert on_topic == {kind: 10 for kind in BAD_KINDS} == summary.bad_by_kind


def test_record_timestamps_are_the_event_timestamps(published_600):
    _, consumed = published_600
    for record in consumed:
        if "itel_bad_kind" in record.headers:
            continue
        event = orjson.loads(record.value)
        assert record.timestamp_ms == int(datetime.fromisoformat(event["timestamp"]).timestamp() * 1000)
        assert record.headers["event_id"] == event["event_id"].encode()


def test_an_assignment_stays_in_one_partition_in_status_order(published_600):
    _, consumed = published_600
    by_key = defaultdict(list)
    for record in consumed:
        if "itel_bad_kind" not in record.headers:
            by_key[record.key].append(record)
    assert sum(len(records) == 3 for records in by_key.values()) > len(by_key) / 2
    for records in by_key.values():
        assert len({r.partition for r in records}) == 1
        in_log_order = sorted(records, key=lambda r: r.offset)
        statuses = [orjson.loads(r.value)["task_status"] for r in in_log_order]
        assert statuses == STATUS_ORDER[: len(records)]


def test_continuous_mode_is_paced_and_stamped_now(kafka_bootstrap, make_topic):
    topic = make_topic(partitions=2)
    started_ms = time.time() * 1000
    summary = publish_events(kafka_bootstrap, topic, None, rate_per_second=100,
                             duration_seconds=1.5, progress=False)
    assert 110 <= summary.total <= 152
    consumed = consume_all(kafka_bootstrap, topic, summary.total)
    assert len(consumed) == summary.total
    assert all(started_ms - 1 <= r.timestamp_ms <= time.time() * 1000 + 1 for r in consumed)


def test_a_missing_topic_fails_fast_with_a_reason(kafka_bootstrap):
    began = time.monotonic()
    with pytest.raises(PublishError, match="no.such.topic"):
        publish_events(kafka_bootstrap, "no.such.topic", 10, progress=False)
    assert time.monotonic() - began < 20


def test_publish_command_prints_the_summary(kafka_bootstrap, make_topic, monkeypatch):
    topic = make_topic(partitions=3)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    result = CliRunner().invoke(main, [
        "publish", "--count", "120", "--bad-fraction", "0.05", "--unknown-fraction", "0.2",
        "--rate", "1000", "--seed", "3", "--topic", topic, "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    assert f"published 120 records to {topic}" in result.output
    assert "valid 114, bad 6" in result.output
    consumed = consume_all(kafka_bootstrap, topic, 120)
    assert sum("itel_bad_kind" in r.headers for r in consumed) == 6


def test_publish_command_refuses_continuous_without_rate():
    result = CliRunner().invoke(main, ["publish", "--continuous", "--bootstrap-servers", "x:1"])
    assert result.exit_code == 2 and "--continuous needs --rate" in result.output


def test_publish_command_defaults_to_the_configured_input_topic(pipeline):
    # The pipeline fixture's config renames the topics; publish follows workers.yaml.
    result = CliRunner().invoke(main, ["publish", "--count", "30", "--seed", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"published 30 records to {pipeline.tracking.input_topic}" in result.output
    assert pipeline.lag("itel_cabinet_tracking_worker") == 30
