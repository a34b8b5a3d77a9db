"""Alerts end to end: real failed runs, the real iTel breaker file, real consumer lag on the
broker, posted to a loopback webhook receiver (or to none, or to one that fails)."""

from __future__ import annotations

import shutil
import socket
from datetime import datetime, timezone

import dagster as dg
import pytest
import yaml

from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.devstack.simulators.alert_receiver import AlertReceiver
from itel_dagster.resources.from_yaml import build_resources
from itel_dagster.resources.itel_api import breaker_for
from itel_dagster.sensors.operations_alerts import itel_operations_alerts
from itel_dagster.sensors.run_failure_alerts import ALERT_TAG, SENSOR_NAME, itel_run_failure_alerts
from itel_dagster.settings.alerts import ALERTS_FILE
from itel_dagster.settings.connections import load_itel_connection
from itel_dagster.settings.paths import PROJECT_ROOT

TRACKING = "itel_cabinet_tracking_worker"
API = "itel_cabinet_api_worker"


@pytest.fixture(scope="module")
def receiver_server():
    with AlertReceiver() as server:
        yield server


@pytest.fixture
def receiver(receiver_server, monkeypatch):
    receiver_server.reset_state()
    monkeypatch.setenv("ALERT_WEBHOOK_URL", receiver_server.webhook_url)
    yield receiver_server
    receiver_server.reset_state()


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/alerts"  # nothing listens there any more


def set_alerts(config_dir, **changes) -> None:
    """Change keys of alerts.yaml's `alerts` section (one level of nesting merged)."""
    path = config_dir / ALERTS_FILE
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            data["alerts"][key].update(value)
        else:
            data["alerts"][key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


# -- run-failure alerts ----------------------------------------------------------------------


def failed_tracking_runs(pipeline, monkeypatch, count=12, seed=51):
    """Runs of the tracking worker that fail because the Delta root cannot be created: at least
    two, one per UTC day (the records span the two whole days before today, whatever the hour)."""
    blocker = pipeline.root / "not-a-directory"
    blocker.write_text("a file where the Delta root should be")
    monkeypatch.setenv("ITEL_DELTA_ROOT", str(blocker / "delta"))
    midnight = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    pipeline.produce(list(generate_records(count=count, seed=seed, days=2, now=midnight)))
    results = pipeline.drain(TRACKING)
    assert results and not any(r.success for r in results)
    return results


def alert_on(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> dg.DagsterRun:
    """Evaluate the run-failure sensor on one failed run, as the daemon does; the run as stored
    afterwards."""
    run = instance.get_run_by_id(result.run_id)
    context = dg.build_run_status_sensor_context(
        sensor_name=SENSOR_NAME, dagster_instance=instance, dagster_run=run,
        dagster_event=result.get_run_failure_event())
    itel_run_failure_alerts(context)
    return instance.get_run_by_id(result.run_id)


def test_failed_run_alert_carries_the_run_facts_and_tags_the_run(pipeline, receiver, monkeypatch):
    first, second, *_ = failed_tracking_runs(pipeline, monkeypatch, count=30)

    run = alert_on(pipeline.instance, first)
    [alert] = receiver.received()
    fields = {f["text"].split("\n", 1)[0].strip("*"): f["text"].split("\n", 1)[1]
              for block in alert["blocks"] for f in block.get("fields", [])}
    assert fields["Worker"] == TRACKING
    assert fields["Job"] == "itel_cabinet_tracking_job"
    assert fields["Run id"] == run.run_id
    assert fields["Partition"] == run.tags["dagster/partition"]
    assert fields["Kafka ranges"] == run.tags["itel/kafka_range"]
    assert fields["Kafka ranges"].startswith(f"{pipeline.tracking.input_topic}[")
    run_url = f"http://localhost:3000/runs/{run.run_id}"
    assert f"<{run_url}|Open the run in Dagster>" in str(alert["blocks"])
    assert "delta_write unavailable" in alert["text"]
    assert run.tags[ALERT_TAG].startswith(f"sent to webhook 127.0.0.1:{receiver.port} at ")

    # The same alert as generic JSON, linking to the UI where it really is.
    monkeypatch.setenv("ALERT_WEBHOOK_FORMAT", "generic")
    monkeypatch.setenv("DAGSTER_UI_URL", "http://dagster.internal:3000/")
    run = alert_on(pipeline.instance, second)
    generic = receiver.received()[1]
    assert generic["kind"] == "run_failure" and generic["severity"] == "error"
    assert (generic["worker"], generic["job"], generic["run_id"]) == (
        TRACKING, "itel_cabinet_tracking_job", run.run_id)
    assert generic["partition"] == run.tags["dagster/partition"]
    assert generic["kafka_ranges"] == [run.tags["itel/kafka_range"]]
    assert generic["link"] == generic["run_url"] == f"http://dagster.internal:3000/runs/{run.run_id}"
    assert "delta_write unavailable" in generic["error"] and len(generic["error"]) <= 500
    assert run.tags[ALERT_TAG].startswith("sent to webhook")


@dg.op
def load_day() -> None:
    raise RuntimeError("the day could not be read")


@dg.job
def manual_job():
    load_day()


@pytest.fixture
def instance_and_config(tmp_path, monkeypatch):
    """A Dagster instance and a config copy, for runs that need no Kafka."""
    shutil.copytree(PROJECT_ROOT / "config", tmp_path / "config")
    monkeypatch.setenv("ITEL_CONFIG_DIR", str(tmp_path / "config"))
    with dg.instance_for_test() as instance:
        yield instance, tmp_path / "config"


def failed_manual_run(instance) -> dg.ExecuteInProcessResult:
    """A run with no itel tags, as a backfill or a launch from the UI has."""
    result = manual_job.execute_in_process(
        instance=instance, raise_on_error=False,
        tags={"dagster/partition": "2026-03-01", "dagster/backfill": "bkfl01"})
    assert not result.success
    return result


@pytest.mark.slow  # runs a failing job and the alert sensor
def test_run_without_itel_tags_gets_an_alert(instance_and_config, receiver, monkeypatch):
    """Evaluated the way the daemon does: the sensor finds the failure in the event log."""
    instance, _ = instance_and_config
    monkeypatch.setenv("ALERT_WEBHOOK_FORMAT", "generic")
    first = itel_run_failure_alerts.evaluate_tick(dg.build_sensor_context(instance=instance))
    result = failed_manual_run(instance)
    itel_run_failure_alerts.evaluate_tick(
        dg.build_sensor_context(instance=instance, cursor=first.cursor))
    run = instance.get_run_by_id(result.run_id)
    [alert] = receiver.received()
    assert alert["job"] == "manual_job" and alert["run_id"] == run.run_id
    assert (alert["partition"], alert["backfill"], alert["kafka_ranges"]) == (
        "2026-03-01", "bkfl01", [])
    assert alert["error"] == "load_day: RuntimeError: the day could not be read"
    assert run.tags[ALERT_TAG].startswith("sent to webhook")


@pytest.mark.slow  # waits out webhook failures and a timeout
def test_unset_unreachable_or_failing_webhook_is_a_tag_never_an_error(
        instance_and_config, receiver_server, monkeypatch):
    instance, config = instance_and_config
    receiver_server.reset_state()

    monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
    run = alert_on(instance, failed_manual_run(instance))
    assert run.tags[ALERT_TAG] == "not sent: ALERT_WEBHOOK_URL not set"

    url = closed_port_url()
    monkeypatch.setenv("ALERT_WEBHOOK_URL", url)
    run = alert_on(instance, failed_manual_run(instance))
    host = url.split("/")[2]
    assert run.tags[ALERT_TAG].startswith(f"not sent: webhook {host} unreachable (ConnectError")

    monkeypatch.setenv("ALERT_WEBHOOK_URL", receiver_server.webhook_url)
    receiver_server.set_faults(error_rate=1.0, error_status=503)
    run = alert_on(instance, failed_manual_run(instance))
    assert run.tags[ALERT_TAG] == \
        f"not sent: webhook 127.0.0.1:{receiver_server.port} answered HTTP 503"

    receiver_server.set_faults(error_rate=0, timeouts=1, timeout_seconds=10)
    set_alerts(config, timeout_seconds=0.5)
    run = alert_on(instance, failed_manual_run(instance))
    assert run.tags[ALERT_TAG].startswith(
        f"not sent: webhook 127.0.0.1:{receiver_server.port} unreachable (ReadTimeout")

    monkeypatch.setenv("ALERT_WEBHOOK_FORMAT", "teams")
    run = alert_on(instance, failed_manual_run(instance))
    assert run.tags[ALERT_TAG].startswith("not sent: alerts.yaml unusable:")
    assert "alerts.format" in run.tags[ALERT_TAG]
    assert receiver_server.received() == []
    receiver_server.reset_state()


# -- operations alerts: the iTel circuit breaker, consumer lag ------------------------------------


class OperationsSensor:
    """Ticks the operations sensor with its cursor kept, as the daemon keeps it."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self.cursor: str | None = None

    def tick(self) -> str:
        """One evaluation; its skip reason, where the tick tells what it saw and sent."""
        # The kafka and itel resources a code location loaded now would inject.
        with dg.build_sensor_context(instance=self.instance, cursor=self.cursor,
                                     resources=build_resources()) as context:
            result = itel_operations_alerts(context)
        assert not result.run_requests
        self.cursor = result.cursor
        return result.skip_reason.skip_message


def kinds(receiver) -> list[str]:
    return [a["kind"] for a in receiver.received()]


def test_breaker_opening_alerts_once_per_outage(pipeline, receiver, monkeypatch):
    monkeypatch.setenv("ALERT_WEBHOOK_FORMAT", "generic")
    # A zero cool-down lets the test play probes without waiting for a timer.
    pipeline.set_itel(circuit_breaker={"failure_threshold": 3, "cool_down_seconds": 0})
    breaker = breaker_for(load_itel_connection())
    sensor = OperationsSensor(pipeline.instance)
    assert "breaker closed" in sensor.tick()
    assert receiver.received() == []

    for _ in range(3):
        breaker.record_failure()
    sensor.tick()
    sensor.tick()
    [opened] = receiver.received()
    assert opened["kind"] == "circuit_breaker_open"
    assert opened["worker"] == API and opened["consecutive_failures"] == 3
    assert opened["openings_total"] == 1 and opened["opened_at"]

    # Failed probes re-open it: the same outage, still one alert.
    for _ in range(2):
        assert breaker.allow_request()
        breaker.record_failure()
    assert breaker.state().opened_count == 3
    sensor.tick()
    assert kinds(receiver) == ["circuit_breaker_open"]

    assert breaker.allow_request()
    breaker.record_success()
    sensor.tick()
    sensor.tick()
    assert kinds(receiver) == ["circuit_breaker_open", "circuit_breaker_closed"]

    # A new outage is a new alert.
    for _ in range(3):
        breaker.record_failure()
    sensor.tick()
    assert kinds(receiver) == ["circuit_breaker_open", "circuit_breaker_closed",
                               "circuit_breaker_open"]
    assert receiver.received()[2]["openings_total"] == 4


def test_lag_above_threshold_alerts_once_and_recovers(pipeline, receiver, monkeypatch):
    monkeypatch.setenv("ALERT_WEBHOOK_FORMAT", "generic")
    set_alerts(pipeline.root / "config", lag={"threshold": 5, "for_seconds": 3600})
    pipeline.produce(list(generate_records(count=20, seed=61, days=1)))
    sensor = OperationsSensor(pipeline.instance)
    told = sensor.tick()
    # Above the threshold, but not yet for an hour.
    assert receiver.received() == []
    assert f"{TRACKING} lag 20" in told and f"{API} lag 20" in told

    set_alerts(pipeline.root / "config", lag={"for_seconds": 0})
    sensor.tick()
    sensor.tick()
    alerts = {a["worker"]: a for a in receiver.received()}
    assert sorted(alerts) == [API, TRACKING] and len(receiver.received()) == 2
    tracking = alerts[TRACKING]
    assert tracking["kind"] == "lag_high" and tracking["lag"] == 20 and tracking["threshold"] == 5
    assert tracking["consumer_group"] == pipeline.tracking.consumer_group
    assert sum(tracking["lag_by_partition"].values()) == 20

    pipeline.drain(TRACKING)
    sensor.tick()
    [recovered] = receiver.received()[2:]
    assert recovered["kind"] == "lag_recovered" and recovered["worker"] == TRACKING
    assert recovered["lag"] == 0
    sensor.tick()
    assert len(receiver.received()) == 3  # the API worker's lag is still the same episode


def test_operations_alerts_never_fail_a_tick(pipeline, receiver_server, monkeypatch):
    set_alerts(pipeline.root / "config", lag={"threshold": 5, "for_seconds": 0})
    pipeline.produce(list(generate_records(count=20, seed=71, days=1)))
    sensor = OperationsSensor(pipeline.instance)

    monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
    told = sensor.tick()
    assert "alerts off (ALERT_WEBHOOK_URL not set)" in told
    assert told.count("lag_high alert not sent: ALERT_WEBHOOK_URL not set") == 2

    # Unreachable webhook: logged and told in the skip reason; the episode counts as alerted.
    monkeypatch.setenv("ALERT_WEBHOOK_URL", closed_port_url())
    breaker = breaker_for(load_itel_connection())
    for _ in range(3):
        breaker.record_failure()
    told = sensor.tick()
    assert "circuit_breaker_open alert not sent: webhook 127.0.0.1:" in told
    assert "unreachable (ConnectError" in told
    assert "alert" not in sensor.tick()

    # Kafka unreachable: the lag check says so, the breaker check still runs.
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", closed_port_url().split("/")[2])
    monkeypatch.setenv("ALERT_WEBHOOK_URL", receiver_server.webhook_url)
    receiver_server.reset_state()
    told = sensor.tick()
    assert "lag unknown" in told and "breaker open" in told
    assert receiver_server.received() == []
