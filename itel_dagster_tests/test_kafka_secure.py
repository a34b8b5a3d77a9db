"""Both workers against a broker whose clients must log in over SASL_SSL (SCRAM-SHA-512 over TLS),
configured only through the KAFKA_* variables; a wrong password or an untrusted certificate is one
clear line in the sensor's skip reason and the run's failure, and commits nothing."""

from __future__ import annotations

import subprocess

import pytest
from confluent_kafka import Consumer, KafkaException

from itel_dagster.devstack.kafka.broker import LocalKafkaBroker
from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.kafka.client_config import client_config
from itel_dagster.kafka.offsets import close_kept_readers
from itel_dagster_tests.fixtures.pipeline_fixtures import open_pipeline

pytestmark = pytest.mark.slow

TRACKING = "itel_cabinet_tracking_worker"
API = "itel_cabinet_api_worker"


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory):
    broker = LocalKafkaBroker(tmp_path_factory.mktemp("kafka-secure"), port=0, secure=True)
    broker.start()
    yield broker
    close_kept_readers()  # the sensors' kept consumers, before their broker goes
    broker.stop()


@pytest.fixture
def secure_pipeline(secure_broker, claimx_simulator, itel_simulator, tmp_path, monkeypatch):
    for name, value in secure_broker.client_env().items():
        monkeypatch.setenv(name, value)
    yield from open_pipeline(secure_broker.status().bootstrap_servers, claimx_simulator,
                             itel_simulator, tmp_path, monkeypatch)


def test_plaintext_client_is_refused_by_the_secure_listener(secure_broker, monkeypatch):
    """Negative control: without the settings nothing gets through, so the tests below prove
    that every client took them."""
    for name in secure_broker.client_env():
        monkeypatch.delenv(name, raising=False)
    consumer = Consumer({"bootstrap.servers": secure_broker.status().bootstrap_servers,
                         "group.id": "probe"})
    try:
        with pytest.raises(KafkaException):
            consumer.list_topics(timeout=2)
    finally:
        consumer.close()


def test_both_workers_end_to_end_over_sasl_ssl(secure_pipeline):
    records = list(generate_records(count=12, seed=3, bad_fraction=0.0, days=1))
    secure_pipeline.produce(records)
    for worker in (TRACKING, API):
        results = secure_pipeline.drain(worker)
        assert results and all(r.success for r in results)
        assert secure_pipeline.lag(worker) == 0
    event_ids = {r.event_id for r in records}
    assert set(secure_pipeline.tracking_table()["event_id"]) == event_ids
    assert set(secure_pipeline.sends_table()["event_id"]) == event_ids
    success = secure_pipeline.consume_all(secure_pipeline.api.success_topic)
    assert len(success) == len(records)


def _untrusted_ca(directory) -> str:
    path = directory / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=other", "-keyout", str(directory / "other.key"),
                    "-out", str(path)], check=True, capture_output=True)
    return str(path)


@pytest.mark.parametrize("refused, expected", [
    ("password", "refused the login: SASL authentication error"),
    ("certificate", "TLS handshake failed: SSL handshake failed"),
])
def test_refused_credentials_are_one_line_and_commit_nothing(
        secure_pipeline, secure_broker, monkeypatch, tmp_path, refused, expected):
    records = list(generate_records(count=5, seed=5, bad_fraction=0.0, days=1))
    secure_pipeline.produce(records)
    good = secure_broker.client_env()
    wrong = ({"KAFKA_SASL_PASSWORD": "not-the-password"} if refused == "password"
             else {"KAFKA_SSL_CA_LOCATION": _untrusted_ca(tmp_path)})

    def use(env):
        for name, value in env.items():
            monkeypatch.setenv(name, value)

    use(wrong)
    skipped = secure_pipeline.tick(TRACKING)
    assert not skipped.run_requests
    reason = skipped.skip_reason.skip_message
    assert expected in reason and "\n" not in reason
    assert good["KAFKA_SASL_PASSWORD"] not in reason

    use(good)
    [request] = secure_pipeline.tick(TRACKING).run_requests
    use(wrong)
    result = secure_pipeline.execute(TRACKING, request)
    assert not result.success
    failures = [e.step_failure_data.error.message
                for e in result.get_step_failure_events()]
    assert failures and all(expected in message for message in failures)

    use(good)
    assert secure_pipeline.lag(TRACKING) == len(records)  # nothing committed
    assert not (secure_pipeline.delta_root / "itel_cabinet_task_tracking").exists()
    assert secure_pipeline.consume_all(secure_pipeline.tracking.success_topic) == []


def test_settings_never_print_the_password(secure_broker, monkeypatch):
    for name, value in secure_broker.client_env().items():
        monkeypatch.setenv(name, value)
    settings = client_config(secure_broker.status().bootstrap_servers)
    password = secure_broker.client_env()["KAFKA_SASL_PASSWORD"]
    assert settings["sasl.password"] == password
    assert password not in repr(settings) and password not in str(settings)
    assert password not in (secure_broker.home / "broker.json").read_text()


def test_kafka_start_secure_prints_the_variables_to_export(secure_broker, monkeypatch):
    from click.testing import CliRunner

    from itel_dagster.cli.kafka_commands import kafka

    env = secure_broker.client_env()
    for name, value in env.items():  # restored after the test (the command sets them too)
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(kafka, ["start", "--secure", "--home", str(secure_broker.home)])
    assert result.exit_code == 0, result.output
    assert "export KAFKA_SECURITY_PROTOCOL=SASL_SSL" in result.output
    assert f"export KAFKA_SSL_CA_LOCATION={env['KAFKA_SSL_CA_LOCATION']}" in result.output
    assert f'export KAFKA_SASL_PASSWORD="$(cat {secure_broker.password_file})"' in result.output
    assert env["KAFKA_SASL_PASSWORD"] not in result.output
