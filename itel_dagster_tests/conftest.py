"""Shared fixtures: a real Kafka broker and real loopback HTTP simulators, started once per run."""

pytest_plugins = [
    "itel_dagster_tests.fixtures.kafka_fixtures",
    "itel_dagster_tests.fixtures.simulator_fixtures",
    "itel_dagster_tests.fixtures.pipeline_fixtures",
    "itel_dagster_tests.fixtures.dagster_ui_fixtures",
]
