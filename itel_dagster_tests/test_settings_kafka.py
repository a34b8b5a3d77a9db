"""client_settings(): the kafka.yaml `client` map (${VAR} expanded), the KAFKA_* security variables
over it, bootstrap.servers, and a repr that never shows a secret."""

from __future__ import annotations

import pytest

from itel_dagster.settings.env_yaml import ConfigError
from itel_dagster.settings.kafka import KAFKA_FILE, client_settings


@pytest.fixture
def kafka_yaml(tmp_path, monkeypatch):
    monkeypatch.setenv("ITEL_CONFIG_DIR", str(tmp_path))
    path = tmp_path / KAFKA_FILE
    path.parent.mkdir(parents=True)
    return path


def test_yaml_client_map_is_expanded_and_the_variables_override_it(kafka_yaml):
    kafka_yaml.write_text(
        "client:\n"
        "  security.protocol: SASL_PLAINTEXT\n"
        "  sasl.username: ${TEAM_USER}\n"
        "  socket.keepalive.enable: true\n")
    env = {"TEAM_USER": "alice", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "KAFKA_SASL_PASSWORD": "s3cret", "KAFKA_SASL_MECHANISM": ""}
    settings = client_settings("b:9093", env=env)
    assert settings == {"security.protocol": "SASL_SSL", "sasl.username": "alice",
                        "socket.keepalive.enable": True, "sasl.password": "s3cret",
                        "bootstrap.servers": "b:9093"}
    assert "s3cret" not in repr(settings) and "s3cret" not in f"{settings}"
    assert "**********" in repr(settings)


def test_bootstrap_servers_come_from_the_environment(kafka_yaml):
    kafka_yaml.write_text("client: {}\n")
    assert client_settings(env={"KAFKA_BOOTSTRAP_SERVERS": "k:1"}) == {"bootstrap.servers": "k:1"}


def test_a_missing_variable_or_a_nested_map_is_one_clear_error(kafka_yaml):
    kafka_yaml.write_text("client:\n  sasl.password: ${KAFKA_TEAM_PASSWORD}\n")
    with pytest.raises(ConfigError, match="needs environment variable KAFKA_TEAM_PASSWORD"):
        client_settings("b:1", env={})
    kafka_yaml.write_text("client:\n  ssl:\n    ca: x\n")
    with pytest.raises(ConfigError, match="plain values"):
        client_settings("b:1", env={})


def test_without_the_file_only_the_variables_apply(tmp_path, monkeypatch):
    monkeypatch.setenv("ITEL_CONFIG_DIR", str(tmp_path))
    assert client_settings("b:1", env={"KAFKA_SSL_CA_LOCATION": "/ca.pem"}) == {
        "ssl.ca.location": "/ca.pem", "bootstrap.servers": "b:1"}
