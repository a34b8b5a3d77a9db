"""The real local broker: lifecycle, idempotent topics, round trip, two independent groups."""

from __future__ import annotations

import base64
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from click.testing import CliRunner
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from itel_dagster.cli import main
from itel_dagster.devstack.kafka.broker import (
    JVM_OPTIONS,
    JVM_OPTIONS_ENV,
    LocalKafkaBroker,
    jvm_options,
    new_cluster_id,
)
from itel_dagster.devstack.kafka.topics import ensure_topics, pipeline_topics
from itel_dagster.kafka.results_producer import DeliveryFailed, ResultsProducer
from itel_dagster.settings.workers import load_workers

PIPELINE_TOPICS = {
    "itel.cabinet.task.tracking",
    "itel.cabinet.task.tracking.success",
    "itel.cabinet.task.tracking.errors",
    "itel.cabinet.api.success",
    "itel.cabinet.api.errors",
    "claimx.task.events",  # the plugin trigger's input, and its error topic
    "itel.cabinet.trigger.errors",
}


def consume_all(bootstrap: str, topic: str, group: str, expected: int, timeout: float = 30.0):
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    received = []
    deadline = time.monotonic() + timeout
    while len(received) < expected and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        received.append(message)
    consumer.close()
    return received


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for i, value in enumerate(values):
        producer.produce(topic, value=value, key=str(i % 7).encode())
    assert producer.flush(30) == 0


def test_cluster_ids_never_start_with_a_dash():
    # kafka-storage format reads "-t -abc..." as an option: 1 id in 64 failed the broker's start.
    ids = [new_cluster_id() for _ in range(5000)]
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(i) == 22 and len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert len(set(ids)) == len(ids)


def test_topics_are_served_with_a_leader_per_partition_when_ensure_topics_returns(kafka_bootstrap):
    """A publisher right after topic creation once got UNKNOWN_TOPIC_OR_PART: the controller had
    created the topic, the broker's metadata did not show it yet."""
    names = {f"test.served.{uuid.uuid4().hex[:8]}.{n}": "input" for n in range(8)}
    assert ensure_topics(kafka_bootstrap, names, partitions=3) == {name: True for name in names}
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for name in names:
        topic = producer.list_topics(name, timeout=10).topics[name]
        assert topic.error is None and len(topic.partitions) == 3
        assert all(p.leader >= 0 for p in topic.partitions.values())
        producer.produce(name, value=b"first record", partition=2)
    assert producer.flush(10) == 0


def test_pipeline_topics_are_created_idempotently(kafka_bootstrap):
    topics = pipeline_topics(load_workers({}))
    assert set(topics) == PIPELINE_TOPICS
    ensure_topics(kafka_bootstrap, topics, partitions=3)
    again = ensure_topics(kafka_bootstrap, topics, partitions=3)
    assert again == {name: False for name in PIPELINE_TOPICS}
    metadata = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10)
    for name in PIPELINE_TOPICS:
        assert len(metadata.topics[name].partitions) == 3


def test_result_topics_take_records_up_to_two_mib(kafka_bootstrap):
    suffix = uuid.uuid4().hex[:8]
    kinds = {f"shape.errors.{suffix}": "errors", f"shape.success.{suffix}": "success",
             f"shape.input.{suffix}": "input"}
    ensure_topics(kafka_bootstrap, kinds, partitions=1)
    big = random.Random(5).randbytes(1_500_000)  # incompressible: lz4 leaves it this size
    producer = ResultsProducer(kafka_bootstrap)
    for name in (f"shape.errors.{suffix}", f"shape.success.{suffix}"):
        producer.send(name, [(b"k", big)])
    producer.flush(30)
    producer.send(f"shape.input.{suffix}", [(b"k", big)])
    with pytest.raises(DeliveryFailed, match="MSG_SIZE_TOO_LARGE"):
        producer.flush(30)

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in kinds]
    configs = {r.name: f.result(10) for r, f in admin.describe_configs(resources).items()}
    assert {name: configs[name]["max.message.bytes"].value for name in kinds} == {
        f"shape.errors.{suffix}": "2097152", f"shape.success.{suffix}": "2097152",
        f"shape.input.{suffix}": "1048588"}  # the input topic keeps the broker's default


def test_round_trip(kafka_bootstrap, make_topic):
    topic = make_topic(partitions=3)
    values = [f"record-{i}".encode() for i in range(50)]
    produce(kafka_bootstrap, topic, values)
    received = consume_all(kafka_bootstrap, topic, f"g-{uuid.uuid4().hex}", len(values))
    assert sorted(m.value() for m in received) == sorted(values)
    assert {m.partition() for m in received} <= {0, 1, 2}


def test_two_consumer_groups_each_receive_every_record(kafka_bootstrap, make_topic):
    topic = make_topic(partitions=3)
    values = [f"event-{i}".encode() for i in range(120)]
    produce(kafka_bootstrap, topic, values)
    tracking = consume_all(kafka_bootstrap, topic, "itel_cabinet_tracking_worker_group-t", 120)
    api = consume_all(kafka_bootstrap, topic, "itel_cabinet_api_worker_group-t", 120)
    assert sorted(m.value() for m in tracking) == sorted(values)
    assert sorted(m.value() for m in api) == sorted(values)


@pytest.mark.kafka
@pytest.mark.slow
def test_cli_start_status_stop_keeps_data(tmp_path, monkeypatch):
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    home = tmp_path / "kafka"
    runner = CliRunner()
    try:
        started = runner.invoke(main, ["kafka", "start", "--home", str(home), "--port", "0"])
        assert started.exit_code == 0, started.output
        assert "topic itel.cabinet.task.tracking: created" in started.output
        status = LocalKafkaBroker(home).status()
        assert status is not None
        produce(status.bootstrap_servers, "itel.cabinet.task.tracking", [b"kept"])

        again = runner.invoke(main, ["kafka", "start", "--home", str(home)])
        assert "already running" in again.output
        assert "topic itel.cabinet.task.tracking: exists" in again.output

        report = runner.invoke(main, ["kafka", "status", "--home", str(home)])
        assert report.exit_code == 0 and "running at" in report.output
        assert "itel.cabinet.api.errors: 3 partitions" in report.output

        stopped = runner.invoke(main, ["kafka", "stop", "--home", str(home)])
        assert "stopped" in stopped.output
        down = runner.invoke(main, ["kafka", "status", "--home", str(home)])
        assert down.exit_code == 1 and "not running" in down.output

        # A restart keeps the ports and the data.
        restarted = runner.invoke(main, ["kafka", "start", "--home", str(home)])
        assert restarted.exit_code == 0, restarted.output
        status = LocalKafkaBroker(home).status()
        kept = consume_all(status.bootstrap_servers, "itel.cabinet.task.tracking", "g-kept", 1)
        assert [m.value() for m in kept] == [b"kept"]
    finally:
        LocalKafkaBroker(home).stop()
    assert LocalKafkaBroker(home).status() is None


def test_existing_cluster_starts_nothing(kafka_bootstrap, tmp_path, monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    home = tmp_path / "unused"
    result = CliRunner().invoke(main, ["kafka", "start", "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert "nothing started" in result.output
    assert not (home / "broker.json").exists()
    stop = CliRunner().invoke(main, ["kafka", "stop", "--home", str(home)])
    assert "not ours to stop" in stop.output


@pytest.mark.slow  # runs Maven, from several processes at once
def test_workers_resolving_the_classpath_at_once_on_a_fresh_machine_all_get_it(tmp_path):
    """pytest workers each start a broker: on a machine without the cached classpath they used to
    share one temporary file, and all but the first failed with 'Maven could not resolve'."""
    workers_at_once = 6
    script = ("import sys; from pathlib import Path; "
              "from itel_dagster.devstack.kafka.classpath import resolve_classpath; "
              "print(resolve_classpath(Path(sys.argv[1])))")
    workers = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "cache")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(workers_at_once)]
    results = [worker.communicate(timeout=300) for worker in workers]

    assert [worker.returncode for worker in workers] == [0] * workers_at_once, [err for _, err in results]
    classpaths = {out.strip() for out, _ in results}
    assert len(classpaths) == 1
    (classpath,) = classpaths
    assert any("kafka" in Path(jar).name for jar in classpath.split(":"))
    assert not list((tmp_path / "cache").glob("*.tmp"))  # every worker's temporary file is gone


def test_jvm_options_from_the_variable_come_after_the_defaults(monkeypatch):
    monkeypatch.setenv(JVM_OPTIONS_ENV, " -XX:TieredStopAtLevel=1  -Xmx512m ")
    assert jvm_options() == [*JVM_OPTIONS, "-XX:TieredStopAtLevel=1", "-Xmx512m"]
    monkeypatch.setenv(JVM_OPTIONS_ENV, "")
    assert jvm_options() == JVM_OPTIONS


@pytest.mark.slow  # starts a broker from three processes at once
def test_xdist_workers_joining_at_once_share_one_broker(tmp_path):
    """What each pytest worker's kafka_bootstrap does under xdist: the first starts the broker in
    the session's folder, the others wait on the lock and join it; one broker process in all."""
    from itel_dagster_tests.fixtures.kafka_fixtures import shared_broker_home

    home = shared_broker_home(tmp_path)
    script = ("import sys; from pathlib import Path; "
              "from itel_dagster_tests.fixtures.kafka_fixtures import join_or_start; "
              "print(join_or_start(Path(sys.argv[1])))")
    workers = [subprocess.Popen([sys.executable, "-c", script, str(home)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(3)]
    try:
        results = [worker.communicate(timeout=180) for worker in workers]
        assert [worker.returncode for worker in workers] == [0, 0, 0], [e for _, e in results]
        (bootstrap,) = {out.strip() for out, _ in results}
        status = LocalKafkaBroker(home).status()
        assert status is not None and status.bootstrap_servers == bootstrap
        admin = AdminClient({"bootstrap.servers": bootstrap})
        assert admin.list_topics(timeout=10).brokers
    finally:
        LocalKafkaBroker(home).stop()
    assert LocalKafkaBroker(home).status() is None
