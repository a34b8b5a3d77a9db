"""Shared fixtures: a real Kafka broker and real loopback HTTP simulators, started once per run."""

pytest_plugins = [
    "itel_dagster_tests.fixtures.kafka_fixtures",
    "itel_dagster_tests.fixtures.simulator_fixtures",
    "itel_dagster_tests.fixtures.pipeline_fixtures",
    "itel_dagster_tests.fixtures.dagster_ui_fixtures",
    "itel_dagster_tests.fixtures.lanes",
    "itel_dagster_tests.fixtures.postgres_fixtures",
    "pytester",  # test_lanes.py runs a small xdist session of its own
]


import os  # noqa: E402

import pytest  # noqa: E402

# The brokers the tests start (the session's, the crash stack's, the CLI's) compile with C1 only:
# less CPU to start and to serve a test's traffic (docs/testing.md). Set the variable to "" to
# test with the brokers' defaults.
os.environ.setdefault("ITEL_KAFKA_JVM_OPTIONS", "-XX:TieredStopAtLevel=1")


@pytest.fixture(scope="session", autouse=True)
def state_dir_outside_the_checkout(tmp_path_factory):
    """Tests that build clients without the `pipeline` fixture (which sets its own) write their
    metrics, cache and breaker state here, never into the checkout's ./var."""
    previous = os.environ.get("ITEL_STATE_DIR")
    os.environ["ITEL_STATE_DIR"] = str(tmp_path_factory.mktemp("state"))
    yield
    if previous is None:
        os.environ.pop("ITEL_STATE_DIR", None)
    else:
        os.environ["ITEL_STATE_DIR"] = previous
