"""The code location's resources built from the YAML connection files (resources/from_yaml.py):
the files' values and the environment's as fields, secrets as dg.EnvVar read when a run
launches, load-time messages kept, and the sensors given their resources by Dagster."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest
import yaml

from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.resources.delta_tables import DeltaTablesResource
from itel_dagster.resources.from_yaml import build_resources
from itel_dagster.resources.itel_api import ItelApiResource
from itel_dagster.resources.kafka import KafkaResource
from itel_dagster.settings.connections import CLAIMX_FILE, ITEL_FILE
from itel_dagster.settings.env_yaml import ConfigError, load_yaml_once
from itel_dagster.settings.kafka import KAFKA_FILE
from itel_dagster.settings.paths import DELTA_FILE, PROJECT_ROOT
from itel_dagster_bench.seed_workers import API_WORKER, TRACKING_WORKER

SECRETS = {
    "ITEL_CABINET_API_TOKEN": "itel-token-5f1c",
    "CLAIMX_API_TOKEN": "claimx-token-9b2e",
    "KAFKA_SASL_PASSWORD": "sasl-password-77a0",
    "ITEL_OAUTH_CLIENT_SECRET": "oauth-secret-3d4f",
    "AZURE_STORAGE_ACCOUNT_KEY": "account-key-c8e1",
}


@pytest.fixture
def config(tmp_path, monkeypatch):
    """A copy of config/ and the variables of a configured deployment."""
    target = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", target)
    monkeypatch.setenv("ITEL_CONFIG_DIR", str(target))
    monkeypatch.setenv("ITEL_STATE_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("ITEL_DELTA_ROOT", str(tmp_path / "delta"))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-a:9092,broker-b:9092")
    monkeypatch.setenv("CLAIMX_API_BASE_URL", "http://claimx.example:8080")
    monkeypatch.setenv("ITEL_CABINET_API_BASE_URL", "http://itel.example:8081")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "pipeline")
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return target


def edit(config, name: str, change) -> None:
    path = config / name
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_a_resource_has_the_values_of_its_file_and_the_environment(config):
    edit(config, ITEL_FILE, lambda d: d["itel_cabinet_api"].update(
        timeout_seconds=12, circuit_breaker={"failure_threshold": 2, "cool_down_seconds": 7}))
    edit(config, KAFKA_FILE, lambda d: d.update(client={"client.id": "itel-${KAFKA_SASL_USERNAME}",
                                                         "socket.keepalive.enable": True}))
    resources = build_resources()
    itel, claimx, kafka, delta = (resources[k] for k in ("itel", "claimx", "kafka", "delta"))
    assert (itel.base_url, itel.timeout_seconds, itel.max_retries) == (
        "http://itel.example:8081/", 12, 5)  # the URL from the variable, 5 the file's
    breaker = itel.circuit_breaker
    assert (breaker.failure_threshold, breaker.cool_down_seconds) == (2, 7)
    assert itel.payload["repair_details"]["cabinet_id"] == [
        "claimx.custom_fields.cabinet_id", "event.task.cabinet_id"]
    assert (claimx.base_url, claimx.max_concurrency, claimx.task_path) == (
        "http://claimx.example:8080/", 16, "/api/v1/tasks/{assignment_id}")
    assert kafka.bootstrap_servers == "broker-a:9092,broker-b:9092"
    assert kafka.client == {"client.id": "itel-pipeline", "socket.keepalive.enable": "true",
                            "security.protocol": "SASL_SSL", "sasl.username": "pipeline"}
    assert delta.root == str(config.parent / "delta")
    # What runs use: the settings models rebuilt from the fields.
    settings = itel.settings()
    assert (settings.timeout_seconds, settings.circuit_breaker.failure_threshold) == (12, 2)


def test_secrets_are_env_vars_read_when_a_run_launches_never_values(config, monkeypatch):
    edit(config, ITEL_FILE, lambda d: d["itel_cabinet_api"]["oauth2"].update(
        token_url="http://itel.example:8081/token", client_id="pipeline"))
    edit(config, DELTA_FILE, lambda d: d.update(storage_options={
        "azure_storage_account_name": "devstore",
        "azure_storage_account_key": "${AZURE_STORAGE_ACCOUNT_KEY}"}))
    resources = build_resources()
    itel, claimx, kafka, delta = (resources[k] for k in ("itel", "claimx", "kafka", "delta"))
    for field, variable in [(itel.auth_token, "ITEL_CABINET_API_TOKEN"),
                            (itel.oauth2.client_secret, "ITEL_OAUTH_CLIENT_SECRET"),
                            (claimx.auth_token, "CLAIMX_API_TOKEN"),
                            (kafka.sasl_password, "KAFKA_SASL_PASSWORD"),
                            (delta.azure_storage_account_key, "AZURE_STORAGE_ACCOUNT_KEY")]:
        assert isinstance(field, dg.EnvVar) and field.env_var_name == variable
    assert delta.storage_options == {"azure_storage_account_name": "devstore"}

    seen = {}

    @dg.op
    def uses_the_connections(itel: ItelApiResource, kafka: KafkaResource,
                             delta: DeltaTablesResource):
        seen["itel"] = itel.settings().auth_token.get_secret_value()
        seen["kafka"] = kafka.settings()["sasl.password"]
        seen["delta"] = delta.options()["azure_storage_account_key"]

    @dg.job
    def connections_job():
        uses_the_connections()

    defs = dg.Definitions(jobs=[connections_job], resources=resources)
    # Dagster reads the variables when the run launches: a rotated token reaches the next run
    # without a reload.
    monkeypatch.setenv("ITEL_CABINET_API_TOKEN", "itel-token-rotated")
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("connections_job").execute_in_process(instance=instance)
        run = instance.get_run_by_id(result.run_id)
    assert seen == {"itel": "itel-token-rotated", "kafka": SECRETS["KAFKA_SASL_PASSWORD"],
                    "delta": SECRETS["AZURE_STORAGE_ACCOUNT_KEY"]}
    shown = repr(resources) + repr(run.run_config) + repr(kafka.settings())
    assert not [value for value in [*SECRETS.values(), "itel-token-rotated"] if value in shown]


def test_a_secret_written_in_the_yaml_stays_a_plain_string(config):
    edit(config, CLAIMX_FILE, lambda d: d["claimx_api"].update(auth_token="literal-token"))
    claimx = build_resources()["claimx"]
    assert not isinstance(claimx.auth_token, dg.EnvVar)
    assert claimx.settings().auth_token.get_secret_value() == "literal-token"


def test_load_time_messages_name_the_file_and_key(config, monkeypatch):
    monkeypatch.delenv("ITEL_CABINET_API_BASE_URL")
    itel = build_resources()["itel"]  # the code location still loads
    expected = (f"{config / ITEL_FILE}: key 'itel_cabinet_api.base_url' needs environment "
                "variable ITEL_CABINET_API_BASE_URL, which is not set")
    assert itel.not_configured == expected
    with pytest.raises(ConfigError) as raised:
        itel.payload_template()  # what a run using it does: fails with the message
    assert str(raised.value) == expected
    edit(config, CLAIMX_FILE, lambda d: d["claimx_api"].update(max_concurrency=0))
    assert build_resources()["claimx"].not_configured == (
        f"{config / CLAIMX_FILE}: key 'claimx_api.max_concurrency' is malformed: "
        "Input should be greater than or equal to 1")
    monkeypatch.setenv("ITEL_DELTA_STORAGE_OPTIONS", "{not json")
    with pytest.raises(ValueError, match="ITEL_DELTA_STORAGE_OPTIONS is not JSON"):
        build_resources()


def test_the_files_are_read_once_per_process_and_again_after_an_edit(config):
    first = build_resources()
    assert build_resources()["itel"] is first["itel"]  # nothing changed: not built again
    assert load_yaml_once(config / ITEL_FILE) is load_yaml_once(config / ITEL_FILE)
    edit(config, ITEL_FILE, lambda d: d["itel_cabinet_api"].update(max_retries=6))
    again = build_resources()
    assert (first["itel"].max_retries, again["itel"].max_retries) == (5, 6)
    assert again["kafka"] is not first["kafka"]  # one build for all: the same kafka values
    assert again["kafka"].model_dump() == first["kafka"].model_dump()


# -- sensors: resources injected by Dagster ---------------------------------------------------


def _recent_records(count: int, seed: int):
    """Records within one UTC day (today, from 00:15): one run holds them all."""
    midnight = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return generate_records(count=count, seed=seed, days=0.01, now=midnight + timedelta(minutes=30))


def test_the_worker_sensor_reads_kafka_through_the_injected_resource(pipeline, monkeypatch):
    pipeline.produce(_recent_records(12, seed=141))
    sensor = pipeline.sensor(TRACKING_WORKER)
    # The process's variable names no cluster: only the resource Dagster injects does.
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS")
    injected = KafkaResource(bootstrap_servers=pipeline.bootstrap)
    with dg.build_sensor_context(instance=pipeline.instance,
                                 resources={"kafka": injected}) as context:
        result = sensor(context)
    assert result.run_requests
    # Negative control: an injected resource naming no cluster fails as the variable would.
    with dg.build_sensor_context(instance=pipeline.instance,
                                 resources={"kafka": KafkaResource()}) as context:
        with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAP_SERVERS is not set"):
            sensor(context)


def test_the_api_sensor_gates_on_the_injected_itel_breaker(pipeline, tmp_path):
    pipeline.produce(_recent_records(6, seed=142))
    resources = build_resources()
    # The injected connection keeps its breaker elsewhere than the files' default place: only a
    # sensor that reads the injected resource sees it open.
    fields = {name: getattr(resources["itel"], name) for name in ItelApiResource.model_fields}
    resources["itel"] = ItelApiResource(
        **{**fields, "breaker_path": str(tmp_path / "injected_breaker.sqlite")})
    breaker = resources["itel"].breaker()
    for _ in range(resources["itel"].circuit_breaker.failure_threshold):
        breaker.record_failure("HTTP 503 on POST /api/v1/tasks")
    with dg.build_sensor_context(instance=pipeline.instance, resources=resources) as context:
        result = pipeline.sensor(API_WORKER)(context)
    assert not result.run_requests
    assert result.skip_reason.skip_message.startswith("iTel circuit breaker open")


def test_an_edited_connection_file_reaches_the_sensor_and_its_runs_together_on_reload(pipeline):
    pipeline.produce(_recent_records(6, seed=143))
    loaded = pipeline.sensor(API_WORKER)
    resources = build_resources()  # what the code location was built from
    pipeline.set_itel(max_retries=4)
    with dg.build_sensor_context(instance=pipeline.instance, resources=resources) as context:
        result = loaded(context)
    assert not result.run_requests
    assert "the itel connection file changed" in result.skip_reason.skip_message
    assert "reload the code location" in result.skip_reason.skip_message
    [run] = pipeline.drain(API_WORKER)  # a reload: sensor and run built from the edited file
    assert run.success
    assert pipeline.lag(API_WORKER) == 0
