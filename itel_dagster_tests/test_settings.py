"""Configuration: ${ENV} expansion and the one-line error naming file, key and variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from itel_dagster.settings import paths
from itel_dagster.settings.connections import load_claimx_connection, load_itel_connection
from itel_dagster.settings.env_yaml import ConfigError, load_yaml
from itel_dagster.settings.kafka import bootstrap_servers, default_partitions
from itel_dagster.settings.workers import load_workers

FULL_ENV = {
    "CLAIMX_API_BASE_URL": "http://127.0.0.1:8081",
    "CLAIMX_API_TOKEN": "claimx-secret-token",
    "ITEL_CABINET_API_BASE_URL": "http://127.0.0.1:8082/",
    "ITEL_CABINET_API_TOKEN": "itel-secret-token",
}


def edited_config(tmp_path: Path, monkeypatch, relative: str, edit) -> None:
    """A config dir holding `relative`, the shipped file passed through `edit`."""
    target = tmp_path / "config" / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(edit((paths.PROJECT_ROOT / "config" / relative).read_text()))
    monkeypatch.setenv("ITEL_CONFIG_DIR", str(tmp_path / "config"))


def write(tmp_path: Path, text: str, name: str = "conf.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_connections_expand_from_env():
    claimx = load_claimx_connection(FULL_ENV)
    assert claimx.base == "http://127.0.0.1:8081"
    assert claimx.auth_token.get_secret_value() == "claimx-secret-token"
    assert claimx.task_path == "/api/v1/tasks/{assignment_id}"
    assert claimx.cache_ttl_seconds == 60
    itel = load_itel_connection(FULL_ENV)
    assert itel.base == "http://127.0.0.1:8082"
    assert (itel.endpoint, itel.method) == ("/api/v1/tasks", "POST")
    assert itel.rate_limit_per_second > 0


def test_shipped_workers_file_holds_both_workers():
    workers = load_workers({})
    tracking = workers["itel_cabinet_tracking_worker"]
    api = workers["itel_cabinet_api_worker"]
    assert (tracking.consumer_group, tracking.batch_size) == ("itel_cabinet_tracking_worker_group", 100)
    assert (api.consumer_group, api.batch_size) == ("itel_cabinet_api_worker_group", 50)
    assert tracking.input_topic == api.input_topic == "itel.cabinet.task.tracking"
    assert (tracking.success_topic, tracking.error_topic) == (
        "itel.cabinet.task.tracking.success", "itel.cabinet.task.tracking.errors")
    assert (api.success_topic, api.error_topic) == ("itel.cabinet.api.success", "itel.cabinet.api.errors")
    assert tracking.log_file == "logs/itel/tracking_worker.log"
    assert api.log_file == "logs/itel/api_worker.log"
    assert tracking.column_mapping["claimx_task_full"] == "claimx_task_full"
    assert api.retry_policy.run_max_retries > tracking.retry_policy.run_max_retries


def test_secrets_never_print():
    claimx = load_claimx_connection(FULL_ENV)
    assert "claimx-secret-token" not in repr(claimx)
    assert "claimx-secret-token" not in str(claimx.model_dump())


def test_expansion_forms(tmp_path):
    path = write(tmp_path, 'a: ${A}\nb: http://${HOST}:${PORT:-80}/x\nc: ${EMPTY:-fallback}\nd: ["${A}"]\n')
    doc = load_yaml(path, {"A": "1", "HOST": "h", "EMPTY": ""})
    assert doc.data == {"a": "1", "b": "http://h:80/x", "c": "fallback", "d": ["1"]}
    assert doc.variables_by_key["b"] == ["HOST", "PORT"]


def test_missing_variable_names_file_key_and_variable():
    env = dict(FULL_ENV)
    del env["CLAIMX_API_TOKEN"]
    with pytest.raises(ConfigError) as raised:
        load_claimx_connection(env)
    message = str(raised.value)
    assert "claimx.yaml" in message
    assert "'claimx_api.auth_token'" in message
    assert "CLAIMX_API_TOKEN" in message
    assert "\n" not in message


def test_malformed_value_from_variable_names_it():
    env = dict(FULL_ENV, ITEL_CABINET_API_BASE_URL="not a url")
    with pytest.raises(ConfigError) as raised:
        load_itel_connection(env)
    message = str(raised.value)
    assert "app.itel.yaml" in message and "'itel_cabinet_api.base_url'" in message
    assert "${ITEL_CABINET_API_BASE_URL}" in message and "malformed" in message


def test_malformed_literal_value(tmp_path, monkeypatch):
    edited_config(tmp_path, monkeypatch, "plugins/itel_cabinet_api/workers.yaml",
                  lambda text: text.replace("batch_size: 50", "batch_size: fifty"))
    with pytest.raises(ConfigError) as raised:
        load_workers({})
    message = str(raised.value)
    assert "workers.yaml" in message
    assert "'workers.itel_cabinet_api_worker.batch_size'" in message


def test_unknown_key_is_refused(tmp_path, monkeypatch):
    edited_config(tmp_path, monkeypatch, "plugins/shared/connections/claimx.yaml",
                  lambda text: text.replace("timeout_seconds: 30", "timeout_secnds: 30"))
    with pytest.raises(ConfigError, match=r"key 'claimx_api.timeout_secnds' is not a known key"):
        load_claimx_connection(FULL_ENV)


def test_malformed_reference_and_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'url' has a malformed variable reference"):
        load_yaml(write(tmp_path, "url: ${BROKEN\n"), {})
    with pytest.raises(ConfigError, match=r"conf2.yaml: not valid YAML at line 2"):
        load_yaml(write(tmp_path, "a: 1\n  b: [\n", "conf2.yaml"), {})
    with pytest.raises(ConfigError, match=r"absent.yaml: file not found"):
        load_yaml(tmp_path / "absent.yaml", {})


def test_missing_section(tmp_path, monkeypatch):
    edited_config(tmp_path, monkeypatch, "plugins/shared/connections/claimx.yaml",
                  lambda text: "other: {}\n")
    with pytest.raises(ConfigError, match=r"claimx.yaml: key 'claimx_api' is missing"):
        load_claimx_connection(FULL_ENV)


def test_delta_root(monkeypatch, tmp_path):
    monkeypatch.delenv("ITEL_DELTA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert paths.delta_root() == str(tmp_path / "data" / "delta")
    for uri in ("s3://bucket/delta", "abfss://c@acct.dfs.core.windows.net/delta", "gs://b/delta/"):
        monkeypatch.setenv("ITEL_DELTA_ROOT", uri)
        assert paths.delta_root() == uri.rstrip("/")
    monkeypatch.setenv("ITEL_DELTA_ROOT", "ftp://nope")
    with pytest.raises(ValueError, match="ITEL_DELTA_ROOT has an unsupported scheme 'ftp'"):
        paths.delta_root()


def test_kafka_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-a:9092,broker-b:9092")
    assert bootstrap_servers() == "broker-a:9092,broker-b:9092"
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS")
    monkeypatch.setenv("ITEL_STATE_DIR", str(tmp_path))
    # The pipeline never falls back to a local broker: it names the missing variable.
    with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAP_SERVERS is not set"):
        bootstrap_servers()
    # The developer commands do look for the local broker, and say how to start one.
    from itel_dagster.devstack.kafka.broker import configured_or_local_bootstrap_servers

    with pytest.raises(RuntimeError, match="itel-dagster kafka start"):
        configured_or_local_bootstrap_servers()
    monkeypatch.setenv("ITEL_KAFKA_PARTITIONS", "6")
    assert default_partitions() == 6
    monkeypatch.setenv("ITEL_KAFKA_PARTITIONS", "zero")
    with pytest.raises(ValueError, match="ITEL_KAFKA_PARTITIONS"):
        default_partitions()


def test_itel_auth_modes_and_payload_mapping():
    env = {"ITEL_CABINET_API_BASE_URL": "http://127.0.0.1:8082"}
    with pytest.raises(ConfigError, match="auth_type 'bearer' needs auth_token: set ITEL_CABINET_API_TOKEN"):
        load_itel_connection(env)
    oauth = dict(env, ITEL_AUTH_TYPE="oauth2_client_credentials")
    with pytest.raises(ConfigError, match="ITEL_OAUTH_CLIENT_SECRET"):
        load_itel_connection(oauth)
    oauth.update(ITEL_OAUTH_TOKEN_URL="http://127.0.0.1:8082/oauth/token",
                 ITEL_OAUTH_CLIENT_ID="client", ITEL_OAUTH_CLIENT_SECRET="very-secret")
    settings = load_itel_connection(oauth)
    assert settings.oauth2.client_id == "client"
    assert "very-secret" not in repr(settings)
    assert settings.batch.enabled is False and settings.batch.size == 50
    assert settings.circuit_breaker.failure_threshold == 5
    assert settings.payload["repair_details"]["cabinet_id"][0] == "claimx.custom_fields.cabinet_id"


def test_payload_source_must_be_known(tmp_path, monkeypatch):
    edited_config(tmp_path, monkeypatch, "plugins/shared/connections/app.itel.yaml",
                  lambda text: text.replace("source_system: =claimx", "source_system: claimx"))
    with pytest.raises(ConfigError, match=r"payload.source_system: source 'claimx' must be"):
        load_itel_connection(FULL_ENV)


def test_delta_storage_options_come_from_one_json_env_var(monkeypatch):
    import pytest

    from itel_dagster.settings.paths import delta_storage_options

    monkeypatch.delenv("ITEL_DELTA_STORAGE_OPTIONS", raising=False)
    assert delta_storage_options() is None
    monkeypatch.setenv("ITEL_DELTA_STORAGE_OPTIONS",
                       '{"AWS_S3_LOCKING_PROVIDER": "dynamodb", "DELTA_DYNAMO_TABLE_NAME": "locks"}')
    assert delta_storage_options() == {"AWS_S3_LOCKING_PROVIDER": "dynamodb",
                                       "DELTA_DYNAMO_TABLE_NAME": "locks"}
    monkeypatch.setenv("ITEL_DELTA_STORAGE_OPTIONS", "AWS_S3_LOCKING_PROVIDER=dynamodb")
    with pytest.raises(ValueError, match="not JSON"):
        delta_storage_options()
    monkeypatch.setenv("ITEL_DELTA_STORAGE_OPTIONS", '{"timeout": 5}')
    with pytest.raises(ValueError, match="object of strings"):
        delta_storage_options()

