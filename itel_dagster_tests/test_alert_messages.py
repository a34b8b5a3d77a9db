"""What an alert says and when one is due: the pure builders, the two wire formats, the episode
rules of the operations alerts, and alerts.yaml."""

from __future__ import annotations

import shutil

import pytest
import yaml

from itel_dagster.alerts.episodes import (
    CLOSED,
    HIGH,
    OPENED,
    RECOVERED,
    AlertCursor,
    breaker_events,
    lag_event,
)
from itel_dagster.alerts.messages import (
    breaker_open_alert,
    generic_payload,
    lag_alert,
    run_failure_alert,
    short_error,
    slack_payload,
)
from itel_dagster.settings.alerts import ALERTS_FILE, load_alert_settings
from itel_dagster.settings.env_yaml import ConfigError
from itel_dagster.settings.paths import PROJECT_ROOT

LIVE_TAGS = {
    "itel/worker": "itel_cabinet_tracking_worker",
    "itel/kafka_partition": "2",
    "itel/kafka_range": "itel.cabinet.task.tracking[2] 100-199",
    "itel/range_start": "100",
    "itel/range_end": "199",
    "itel/attempt": "2",
    "dagster/partition": "2026-03-04",
}
RUN_URL = "http://localhost:3000/runs/abc-123"


def live_alert(error="read_kafka_range: KafkaException: broker down"):
    return run_failure_alert(run_id="abc-123", job_name="itel_cabinet_tracking_job",
                             tags=LIVE_TAGS, error=error, run_url=RUN_URL)


def test_slack_message_of_a_failed_run_shows_every_fact_and_links_the_run():
    payload = slack_payload(live_alert())
    header, facts, error, link = payload["blocks"]
    assert header["text"]["text"] == "Run failed: itel_cabinet_tracking_job (2026-03-04)"
    shown = {f["text"].split("\n", 1)[0].strip("*"): f["text"].split("\n", 1)[1]
             for f in facts["fields"]}
    assert shown == {
        "Worker": "itel_cabinet_tracking_worker",
        "Job": "itel_cabinet_tracking_job",
        "Run id": "abc-123",
        "Partition": "2026-03-04",
        "Kafka ranges": "itel.cabinet.task.tracking[2] 100-199",
        "Attempt": "2",
    }
    assert "KafkaException: broker down" in error["text"]["text"]
    assert link["text"]["text"] == f"<{RUN_URL}|Open the run in Dagster>"
    # The notification text alone carries the same facts (clients without blocks).
    for fact in ("itel_cabinet_tracking_worker", "abc-123", "2026-03-04",
                 "itel.cabinet.task.tracking[2] 100-199", "broker down", RUN_URL):
        assert fact in payload["text"]


def test_generic_message_is_one_flat_object():
    payload = generic_payload(live_alert())
    assert payload == {
        "kind": "run_failure",
        "severity": "error",
        "title": "Run failed: itel_cabinet_tracking_job (2026-03-04)",
        "worker": "itel_cabinet_tracking_worker",
        "job": "itel_cabinet_tracking_job",
        "run_id": "abc-123",
        "partition": "2026-03-04",
        "kafka_ranges": ["itel.cabinet.task.tracking[2] 100-199"],
        "attempt": "2",
        "isolation": None,
        "backfill": None,
        "will_retry": False,
        "run_url": RUN_URL,
        "error": "read_kafka_range: KafkaException: broker down",
        "link": RUN_URL,
        "text": payload["text"],
    }


def test_a_failed_isolation_probe_says_so():
    tags = {**LIVE_TAGS, "itel/isolation": "probe 2:100-150 (bad record before 199)"}
    alert = run_failure_alert(run_id="abc-123", job_name="itel_cabinet_tracking_job", tags=tags,
                              error="write_tracking_rows: ValueError: bad row", run_url=RUN_URL)
    assert generic_payload(alert)["isolation"] == "probe 2:100-150 (bad record before 199)"
    assert "probe 2:100-150 (bad record before 199)" in slack_payload(alert)["text"]


def test_backfill_run_without_itel_tags_still_gets_an_alert():
    alert = run_failure_alert(
        run_id="r1", job_name="itel_cabinet_tracking_job",
        tags={"dagster/partition": "2026-03-01", "dagster/backfill": "bkfl"},
        error="boom", run_url="http://ui/runs/r1", worker="itel_cabinet_tracking_worker")
    payload = generic_payload(alert)
    assert payload["worker"] == "itel_cabinet_tracking_worker"
    assert payload["partition"] == "2026-03-01"
    assert payload["kafka_ranges"] == []
    assert payload["backfill"] == "bkfl"
    assert payload["will_retry"] is False
    ranged = run_failure_alert(
        run_id="r2", job_name="some_job",
        tags={"dagster/asset_partition_range_start": "2026-03-01",
              "dagster/asset_partition_range_end": "2026-03-03"},
        error="boom", run_url="http://ui/runs/r2")
    assert generic_payload(ranged)["partition"] == "2026-03-01…2026-03-03"
    assert generic_payload(ranged)["worker"] is None
    assert "Worker" not in slack_payload(ranged)["text"]


def test_a_run_dagster_will_retry_says_so():
    tags = {**LIVE_TAGS, "dagster/will_retry": "true"}
    alert = run_failure_alert(run_id="abc-123", job_name="itel_cabinet_tracking_job", tags=tags,
                              error="boom", run_url=RUN_URL)
    assert generic_payload(alert)["will_retry"] is True
    assert "Will retry: yes" in slack_payload(alert)["text"]
    assert "Will retry" not in slack_payload(live_alert())["text"]


def test_errors_are_short_and_name_the_failed_steps():
    error = short_error(
        "Execution of run for \"itel_cabinet_tracking_job\" failed. Steps failed: [...]",
        [("asset.delta_write", "dagster._core.definitions.events.Failure: Delta down\n  trace"),
         ("asset.commit", "")])
    assert error == "asset.delta_write: Failure: Delta down\nasset.commit: failed"
    assert short_error("Run failed: lost its process", []) == "Run failed: lost its process"
    long = short_error(None, [("step", "x" * 5000)])
    assert len(long) == 500 and long.endswith("…")
    # A huge error can never make Slack refuse the message.
    payload = slack_payload(live_alert(error="y" * 10_000))
    assert all(len(f["text"]) <= 2000 for b in payload["blocks"] for f in b.get("fields", []))
    assert len(payload["blocks"][2]["text"]["text"]) < 3000


def test_breaker_and_lag_messages():
    opened = generic_payload(breaker_open_alert(
        consecutive_failures=5, opened_at="2026-03-04T10:00:00+00:00",
        reopens_at="2026-03-04T10:00:30+00:00", openings_total=1,
        worker="itel_cabinet_api_worker", ui_base_url="http://ui:3000"))
    assert opened["kind"] == "circuit_breaker_open"
    assert opened["consecutive_failures"] == 5 and opened["probe_at"].endswith("10:00:30+00:00")
    assert opened["link"] == "http://ui:3000/runs?q%5B%5D=tag%3Aitel%2Fworker%3Ditel_cabinet_api_worker"
    lag = slack_payload(lag_alert(
        worker="itel_cabinet_api_worker", consumer_group="g", topic="t", lag=12_345,
        lag_by_partition={1: 345, 0: 12_000}, threshold=10_000,
        above_since="2026-03-04T10:00:00+00:00", for_seconds=300, ui_base_url="http://ui"))
    assert lag["blocks"][0]["text"]["text"] == \
        "Lag of itel_cabinet_api_worker above 10000 for 300 s: 12345"
    assert "*Lag by partition*\n0: 12000, 1: 345" in [f["text"] for f in lag["blocks"][1]["fields"]]


def test_breaker_alerts_once_per_episode():
    cursor = AlertCursor()
    assert breaker_events(cursor, is_closed=True, opened_count=0) == []
    assert breaker_events(cursor, is_closed=False, opened_count=1) == [OPENED]
    assert breaker_events(cursor, is_closed=False, opened_count=1) == []
    # Failed probes re-open it: the same outage, no new alert.
    assert breaker_events(cursor, is_closed=False, opened_count=3) == []
    assert breaker_events(cursor, is_closed=True, opened_count=3) == [CLOSED]
    assert breaker_events(cursor, is_closed=True, opened_count=3) == []
    # Opened and closed again between two ticks: both are told.
    assert breaker_events(cursor, is_closed=True, opened_count=4) == [OPENED, CLOSED]
    # The state survives the cursor's JSON.
    cursor = AlertCursor.from_json(AlertCursor.from_json(cursor.to_json()).to_json())
    assert breaker_events(cursor, is_closed=True, opened_count=4) == []


def test_breaker_open_at_first_look_or_after_a_lost_cursor_alerts():
    assert breaker_events(AlertCursor(), is_closed=False, opened_count=7) == [OPENED]
    assert breaker_events(AlertCursor.from_json("not json"), is_closed=False,
                          opened_count=7) == [OPENED]
    # A recreated breaker file (count back to 0) is a fresh start, not a crash.
    cursor = AlertCursor(breaker_openings=9)
    assert breaker_events(cursor, is_closed=True, opened_count=0) == []
    assert breaker_events(cursor, is_closed=False, opened_count=1) == [OPENED]


def test_lag_alerts_once_when_it_stays_high_and_once_when_it_recovers():
    cursor = AlertCursor()
    assert lag_event(cursor, "w", lag=50, threshold=100, for_seconds=60, now=0) is None
    assert lag_event(cursor, "w", lag=500, threshold=100, for_seconds=60, now=10) is None
    assert lag_event(cursor, "w", lag=800, threshold=100, for_seconds=60, now=69) is None
    assert lag_event(cursor, "w", lag=900, threshold=100, for_seconds=60, now=70) == HIGH
    assert lag_event(cursor, "w", lag=990, threshold=100, for_seconds=60, now=200) is None
    assert lag_event(cursor, "other", lag=990, threshold=100, for_seconds=60, now=200) is None
    assert lag_event(cursor, "w", lag=100, threshold=100, for_seconds=60, now=210) == RECOVERED
    assert lag_event(cursor, "w", lag=0, threshold=100, for_seconds=60, now=220) is None
    # A dip to the threshold starts the clock again; a dip of an un-alerted episode is silent.
    assert lag_event(cursor, "other", lag=5, threshold=100, for_seconds=60, now=230) is None
    assert lag_event(cursor, "other", lag=500, threshold=100, for_seconds=60, now=240) is None
    assert cursor.lag["other"].above_since == 240


@pytest.fixture
def config_copy(tmp_path, monkeypatch):
    shutil.copytree(PROJECT_ROOT / "config", tmp_path / "config")
    monkeypatch.setenv("ITEL_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "config" / ALERTS_FILE


def test_alerts_yaml_defaults_and_environment(config_copy):
    settings = load_alert_settings({})
    assert settings.webhook_url is None
    assert settings.format == "slack"
    assert settings.run_url("r1") == "http://localhost:3000/runs/r1"
    assert (settings.lag.threshold, settings.lag.for_seconds) == (10_000, 300)
    settings = load_alert_settings({"ALERT_WEBHOOK_URL": "https://hooks.example/T/B/secret",
                                    "ALERT_WEBHOOK_FORMAT": "generic",
                                    "DAGSTER_UI_URL": "https://dagster.example/"})
    assert settings.webhook_url.get_secret_value() == "https://hooks.example/T/B/secret"
    assert "secret" not in repr(settings) and "secret" not in str(settings)
    assert settings.run_url("r1") == "https://dagster.example/runs/r1"


def test_alerts_yaml_mistakes_name_the_key_and_variable(config_copy):
    with pytest.raises(ConfigError, match=r"alerts.webhook_url' \(from \$\{ALERT_WEBHOOK_URL\}\)"):
        load_alert_settings({"ALERT_WEBHOOK_URL": "hooks.example/no-scheme"})
    with pytest.raises(ConfigError, match=r"alerts.format' \(from \$\{ALERT_WEBHOOK_FORMAT\}\)"):
        load_alert_settings({"ALERT_WEBHOOK_FORMAT": "teams"})
    data = yaml.safe_load(config_copy.read_text())
    data["alerts"]["lag"]["threshhold"] = 5
    config_copy.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="alerts.lag.threshhold' is not a known key"):
        load_alert_settings({})
