"""delta-rs storage options: connections/delta.yaml's `storage_options` (${VAR} expanded), with
ITEL_DELTA_STORAGE_OPTIONS over it. The object-store tests use them against Azurite."""

from __future__ import annotations

import shutil

import pytest

from itel_dagster.settings.env_yaml import ConfigError
from itel_dagster.settings.paths import DELTA_FILE, PROJECT_ROOT, delta_root, delta_storage_options


@pytest.fixture
def config(tmp_path, monkeypatch):
    shutil.copytree(PROJECT_ROOT / "config", tmp_path / "config")
    monkeypatch.setenv("ITEL_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "config" / DELTA_FILE


def test_the_shipped_file_sets_no_option(config):
    assert delta_storage_options({}) is None


def test_options_come_from_the_yaml_with_variables_and_the_env_json_overrides(config):
    config.write_text("storage_options:\n"
                      "  azure_storage_account_name: ${ACCOUNT}\n"
                      "  azure_storage_account_key: ${KEY}\n"
                      "  azure_storage_endpoint: ${ENDPOINT:-}\n"
                      "  allow_http: true\n"
                      "  timeout: 30s\n")
    env = {"ACCOUNT": "acct", "KEY": "secret"}
    # An optional variable left unset drops its key; YAML booleans become delta-rs' "true".
    assert delta_storage_options(env) == {"azure_storage_account_name": "acct",
                                          "azure_storage_account_key": "secret",
                                          "allow_http": "true", "timeout": "30s"}
    env |= {"ENDPOINT": "http://127.0.0.1:1/acct",
            "ITEL_DELTA_STORAGE_OPTIONS": '{"timeout": "5s", "azure_storage_account_key": "k2"}'}
    assert delta_storage_options(env) == {"azure_storage_account_name": "acct",
                                          "azure_storage_account_key": "k2",
                                          "azure_storage_endpoint": "http://127.0.0.1:1/acct",
                                          "allow_http": "true", "timeout": "5s"}


def test_a_missing_variable_or_a_nested_value_names_the_file_and_key(config):
    config.write_text("storage_options:\n  azure_storage_account_key: ${KEY}\n")
    with pytest.raises(ConfigError, match=r"delta.yaml: key 'storage_options.azure_storage_"
                                          r"account_key' needs environment variable KEY"):
        delta_storage_options({})
    config.write_text("storage_options:\n  nested: {a: b}\n")
    with pytest.raises(ConfigError, match="key 'storage_options' must map delta-rs storage"):
        delta_storage_options({})


def test_the_env_json_alone_still_works_without_the_file(config):
    config.unlink()
    assert delta_storage_options({}) is None
    assert delta_storage_options({"ITEL_DELTA_STORAGE_OPTIONS": '{"a": "b"}'}) == {"a": "b"}


def test_az_and_azure_roots_are_accepted(monkeypatch):
    for uri in ("az://container/delta/", "azure://container/delta"):
        monkeypatch.setenv("ITEL_DELTA_ROOT", uri)
        assert delta_root() == uri.rstrip("/")
