"""The API worker against iTel answers that once stalled it, end to end (real broker, simulators,
Delta ledger, Dagster runs): refused credentials, a long Retry-After, a non-ASCII event_id; and
the `itel-dagster breaker` command steering the API sensor's gate."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from itel_dagster.alerts.episodes import AlertCursor
from itel_dagster.alerts.messages import plain_text
from itel_dagster.cli import main
from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.resources.circuit_breaker import until_text
from itel_dagster.resources.from_yaml import build_resources
from itel_dagster.resources.itel_api import breaker_for
from itel_dagster.sensors.itel_breaker_gate import itel_breaker_gate
from itel_dagster.sensors.operations_alerts import breaker_alerts
from itel_dagster.settings.alerts import load_alert_settings
from itel_dagster.settings.connections import load_itel_connection

API = "itel_cabinet_api_worker"
# Long enough that the breaker is certainly still open while a test looks at it.
HELD = {"failure_threshold": 3, "cool_down_seconds": 120}
# Records of one UTC day, so each tick dispatches one run (records over the last 24 h span two days,
# and at some hours the first day's run holds too few records to open the breaker).
YESTERDAY_EVENING = (datetime.now(timezone.utc) - timedelta(days=1)).replace(
    hour=20, minute=0, second=0, microsecond=0)


def breaker_cli(*args: str) -> str:
    result = CliRunner().invoke(main, ["breaker", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def open_alert_text() -> str:
    [alert] = breaker_alerts(load_alert_settings(), AlertCursor(), build_resources()["itel"])[0]
    assert alert.kind == "circuit_breaker_open"
    return plain_text(alert)


def accepted_keys(itel) -> Counter:
    return Counter(r["idempotency_key"] for r in itel.accepted_requests())


def assert_waiting_in_kafka(pipeline, runs, count: int) -> None:
    """One run that held everything back (no tight loop of runs), nothing dead-lettered."""
    assert len(runs) == 1 and runs[0].success
    assert pipeline.lag(API) == count
    assert pipeline.consume_all(pipeline.api.error_topic) == []


@pytest.mark.parametrize("refusal", ["token_endpoint_401", "every_request_403"])
def test_refused_credentials_open_the_breaker_and_events_wait_in_kafka(
        pipeline, itel_simulator, refusal):
    if refusal == "token_endpoint_401":
        pipeline.set_itel(auth_type="oauth2_client_credentials", auth_token=None, oauth2={
            "token_url": f"{itel_simulator.url}/oauth/token",
            "client_id": itel_simulator.client_id, "client_secret": itel_simulator.client_secret})
        itel_simulator.set_faults(wrong_auth=True)
        cause = "iTel token endpoint refused the client credentials (HTTP 401)"
    else:
        itel_simulator.set_faults(error_rate=1.0, error_status=403)
        cause = "iTel answers 403 to every request"
    pipeline.set_itel(circuit_breaker=HELD)
    records = list(generate_records(count=6, seed=71, days=0.3, now=YESTERDAY_EVENING))
    pipeline.produce(records)

    runs = pipeline.drain(API, max_ticks=4)  # was: a run per tick, forever, nothing sent

    assert_waiting_in_kafka(pipeline, runs, len(records))
    tick = pipeline.tick(API)
    assert not tick.run_requests and cause in tick.skip_reason.skip_message
    alert = open_alert_text()
    assert f"Cause: {cause}" in alert
    assert until_text(breaker_for(load_itel_connection()).state().reopens_at) in alert
    assert itel_simulator.accepted_requests() == []
    # (Once the credentials work, the held events go like any after an outage: see
    # test_a_long_retry_after_opens_the_breaker_until_then_and_breaker_close_resumes.)


def test_a_long_retry_after_opens_the_breaker_until_then_and_breaker_close_resumes(
        pipeline, itel_simulator):
    itel_simulator.set_faults(rate_limited=1000, retry_after_seconds=3600)  # every request
    records = list(generate_records(count=4, seed=72, days=0.3, now=YESTERDAY_EVENING))
    pipeline.produce(records)
    began = time.time()

    runs = pipeline.drain(API, max_ticks=4)

    assert time.time() - began < 60  # not an hour asleep in a sender thread
    assert_waiting_in_kafka(pipeline, runs, len(records))
    state = breaker_for(load_itel_connection()).state()
    assert state.reopens_at >= began + 3600
    until = until_text(state.reopens_at)
    assert until.endswith(" UTC")
    log = (pipeline.root / "logs" / "api_worker.log").read_text()
    assert "Retry-After 3600" in log and f"circuit breaker open until {until}" in log
    assert until in pipeline.tick(API).skip_reason.skip_message
    alert = open_alert_text()
    assert "Retry-After 3600" in alert and until in alert

    itel_simulator.clear_faults()
    assert "state: closed" in breaker_cli("close")
    assert all(r.success for r in pipeline.drain(API))
    assert accepted_keys(itel_simulator) == Counter(r.event_id for r in records)
    assert pipeline.lag(API) == 0


def test_a_non_ascii_event_id_is_sent_once_and_the_worker_moves_on(pipeline, itel_simulator):
    records = list(generate_records(count=6, seed=73, days=0.3, now=YESTERDAY_EVENING))
    event = json.loads(records[2].value)
    event["event_id"] = "évt-ü-1"
    records[2] = records[2]._replace(value=json.dumps(event).encode(), event_id="évt-ü-1")
    pipeline.produce(records)

    runs = pipeline.drain(API)
    runs += pipeline.drain(API)  # a re-dispatch, were anything left, sends nothing again

    assert runs and all(r.success for r in runs)
    keys = {r.event_id for r in records} - {"évt-ü-1"} | {"%C3%A9vt-%C3%BC-1"}
    assert accepted_keys(itel_simulator) == Counter(keys)
    ledger = pipeline.sends_table()
    assert sorted(ledger["event_id"]) == sorted(r.event_id for r in records)
    assert set(ledger["outcome"]) == {"accepted"}
    assert pipeline.lag(API) == 0


def test_breaker_command_opens_and_closes_the_api_sensors_gate(tmp_path, monkeypatch):
    monkeypatch.setenv("ITEL_CABINET_API_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("ITEL_CABINET_API_TOKEN", "token")
    monkeypatch.setenv("ITEL_STATE_DIR", str(tmp_path))
    for command in ([], ["status"], ["open"], ["close"]):
        assert "Usage: main breaker" in breaker_cli(*command, "--help")
    assert "state: closed" in breaker_cli("status")
    assert itel_breaker_gate(build_resources()["itel"]) is None

    shown = breaker_cli("open", "--reason", "iTel maintenance")
    assert "state: open" in shown and "cause: opened by hand: iTel maintenance" in shown
    assert "no sends until: it is closed by hand" in shown
    assert str(tmp_path / "itel_circuit_breaker.sqlite") in shown
    reason = itel_breaker_gate(build_resources()["itel"])
    assert reason.startswith("iTel circuit breaker open (opened by hand: iTel maintenance)")

    breaker_cli("close")
    assert itel_breaker_gate(build_resources()["itel"]) is None

    before = time.time()
    shown = breaker_cli("open", "--for", "90", "--reason", "deploy")
    until = breaker_for(load_itel_connection()).state().reopens_at
    assert before + 90 <= until <= time.time() + 90
    assert f"no sends until: {until_text(until)}" in shown
    assert until_text(until) in itel_breaker_gate(build_resources()["itel"])
    assert "state: closed" in breaker_cli("close")
    assert itel_breaker_gate(build_resources()["itel"]) is None
