"""`itel-dagster lag` prints the figures of Kafka's own `kafka-consumer-groups --describe`, which
these tests run from the broker's jars (ConsumerGroupCommand in kafka-tools) for comparison."""

from __future__ import annotations

import json
import subprocess
import uuid

from click.testing import CliRunner
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from itel_dagster.cli import main
from itel_dagster.devstack.kafka.broker import LOG4J_CONFIG, classpath_cache_dir
from itel_dagster.devstack.kafka.classpath import java_executable, resolve_classpath
from itel_dagster.kafka.offsets import commit_offsets

Row = tuple[str, str, int, str, str, str]  # group, topic, partition, current, end, lag


def produce(bootstrap: str, topic: str, counts: dict[int, int]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for partition, count in counts.items():
        for i in range(count):
            producer.produce(topic, value=f"{partition}-{i}".encode(), partition=partition)
    assert producer.flush(30) == 0


def kafka_describe(bootstrap: str, group: str) -> set[Row]:
    """The rows of `kafka-consumer-groups.sh --describe --group <group>`."""
    result = subprocess.run(
        [java_executable(), f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
         "-cp", resolve_classpath(classpath_cache_dir()),
         "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
         "--bootstrap-server", bootstrap, "--describe", "--group", group],
        capture_output=True, text=True, timeout=120, check=True,
    )
    lines = result.stdout.strip().splitlines()
    header = lines.index(next(line for line in lines if line.startswith("GROUP")))
    assert lines[header].split()[:6] == ["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET",
                                         "LOG-END-OFFSET", "LAG"], result.stdout
    return {_row(line.split()) for line in lines[header + 1:] if line.strip()}


def _row(cells: list[str]) -> Row:
    return (cells[0], cells[1], int(cells[2]), cells[3], cells[4], cells[5])


def lag_table(*args: str) -> set[Row]:
    result = CliRunner().invoke(main, ["lag", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].split() == ["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET",
                                "LOG-END-OFFSET", "LAG"]
    return {_row(line.split()) for line in lines[1:]}


def test_lag_of_a_group_equals_kafka_consumer_groups(kafka_bootstrap, make_topic):
    topic = make_topic(partitions=4)
    group = f"lag-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topic, {0: 12, 1: 5, 2: 7, 3: 3})
    commit_offsets(kafka_bootstrap, group, topic, {0: 4, 1: 5, 2: 1})  # 3: never committed
    # Retention removed records past partition 2's commit: Kafka still counts lag from the commit.
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.delete_records([TopicPartition(topic, 2, 5)]).values():
        future.result(timeout=30)

    ours = lag_table("--group", group, "--topic", topic, "--bootstrap-servers", kafka_bootstrap)
    kafkas = kafka_describe(kafka_bootstrap, group)

    assert kafkas == {(group, topic, 0, "4", "12", "8"), (group, topic, 1, "5", "5", "0"),
                      (group, topic, 2, "1", "7", "6")}
    # Every row Kafka prints is ours too; the never-committed partition is listed with "-".
    assert ours == kafkas | {(group, topic, 3, "-", "3", "-")}


def test_lag_json_carries_the_same_figures_and_the_log_start(kafka_bootstrap, make_topic):
    topic = make_topic(partitions=2)
    group = f"lag-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topic, {0: 3, 1: 2})
    commit_offsets(kafka_bootstrap, group, topic, {0: 1})
    result = CliRunner().invoke(main, ["lag", "--group", group, "--topic", topic, "--json",
                                       "--bootstrap-servers", kafka_bootstrap])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert rows == [
        {"group": group, "topic": topic, "partition": 0, "current_offset": 1,
         "log_end_offset": 3, "lag": 2, "log_start_offset": 0},
        {"group": group, "topic": topic, "partition": 1, "current_offset": None,
         "log_end_offset": 2, "lag": None, "log_start_offset": 0},
    ]


def test_lag_defaults_to_both_workers_groups(pipeline):
    tracking, api = pipeline.tracking, pipeline.api
    produce(pipeline.bootstrap, tracking.input_topic, {0: 6, 1: 4, 2: 2})
    commit_offsets(pipeline.bootstrap, tracking.consumer_group, tracking.input_topic,
                   {0: 6, 1: 1, 2: 2})
    commit_offsets(pipeline.bootstrap, api.consumer_group, api.input_topic, {0: 3, 1: 4, 2: 0})

    ours = lag_table()  # KAFKA_BOOTSTRAP_SERVERS and the workers.yaml of this test's config

    expected = {
        (tracking.consumer_group, tracking.input_topic, 0, "6", "6", "0"),
        (tracking.consumer_group, tracking.input_topic, 1, "1", "4", "3"),
        (tracking.consumer_group, tracking.input_topic, 2, "2", "2", "0"),
        (api.consumer_group, api.input_topic, 0, "3", "6", "3"),
        (api.consumer_group, api.input_topic, 1, "4", "4", "0"),
        (api.consumer_group, api.input_topic, 2, "0", "2", "2"),
    }
    # The plugin trigger's group too: nothing upstream yet, nothing committed.
    trigger = pipeline.workers["itel_cabinet_trigger"]
    assert ours == expected | {(trigger.consumer_group, trigger.input_topic, p, "-", "0", "-")
                               for p in range(3)}
    assert kafka_describe(pipeline.bootstrap, tracking.consumer_group) | kafka_describe(
        pipeline.bootstrap, api.consumer_group) == expected
    # --group picks one worker's group; its topic comes from workers.yaml.
    assert lag_table("--group", api.consumer_group) == {r for r in expected if r[0] == api.consumer_group}


def test_lag_of_an_unknown_group_without_topic_is_a_usage_error(pipeline):
    result = CliRunner().invoke(main, ["lag", "--group", "nobody"])
    assert result.exit_code == 2
    assert "not a worker's group" in result.output and "--topic" in result.output
