"""Which Kafka cluster the pipeline talks to and how: KAFKA_BOOTSTRAP_SERVERS (else the local
broker), the `client` map of connections/kafka.yaml and the KAFKA_SECURITY_PROTOCOL / KAFKA_SASL_* /
KAFKA_SSL_CA_LOCATION variables. Every client the package builds takes `client_settings()`; its
repr never shows a secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from itel_dagster.settings.env_yaml import ConfigError, load_yaml_once
from itel_dagster.settings.paths import config_dir

KAFKA_FILE = "plugins/shared/connections/kafka.yaml"
# Applied over the YAML's `client` map when set (non-empty).
ENV_SETTINGS = {
    "KAFKA_SECURITY_PROTOCOL": "security.protocol",
    "KAFKA_SASL_MECHANISM": "sasl.mechanism",
    "KAFKA_SASL_USERNAME": "sasl.username",
    "KAFKA_SASL_PASSWORD": "sasl.password",
    "KAFKA_SSL_CA_LOCATION": "ssl.ca.location",
}
SECRET_SETTINGS = {
    "sasl.password", "ssl.key.password", "ssl.keystore.password", "ssl.key.pem",
    "ssl.certificate.pem", "sasl.oauthbearer.client.secret", "sasl.oauthbearer.config",
    "sasl.jaas.config",
}


class KafkaClientSettings(dict):
    """librdkafka settings: a plain dict for the clients, masked when printed or logged."""

    def __repr__(self) -> str:
        shown = {k: ("**********" if k in SECRET_SETTINGS else v) for k, v in self.items()}
        return f"KafkaClientSettings({shown!r})"

    __str__ = __repr__


def yaml_client_settings(env: Mapping[str, str] | None = None) -> dict:
    """The `client` map of connections/kafka.yaml (${VAR} expanded); {} when the file is absent."""
    path = config_dir() / KAFKA_FILE
    if not path.exists():
        return {}
    document = load_yaml_once(path, env)
    client = (document.data or {}).get("client") if isinstance(document.data, dict) else None
    if client is None:
        return {}
    if not isinstance(client, dict) or not all(
        isinstance(v, (str, int, float, bool)) for v in client.values()
    ):
        raise ConfigError(f"{path}: key 'client' must map librdkafka settings to plain values")
    return {str(k): v for k, v in client.items()}


def env_security_settings(env: Mapping[str, str]) -> dict[str, str]:
    """The librdkafka settings of the KAFKA_SECURITY_PROTOCOL / KAFKA_SASL_* / KAFKA_SSL_CA_LOCATION
    variables that are set."""
    return {key: env[name] for name, key in ENV_SETTINGS.items() if env.get(name)}


def client_settings(bootstrap_servers: str | None = None,
                    env: Mapping[str, str] | None = None) -> KafkaClientSettings:
    """Settings every Consumer, Producer and AdminClient starts from: bootstrap.servers (given,
    else configured), the YAML `client` map, then the KAFKA_* security variables that are set."""
    env = os.environ if env is None else env
    settings = KafkaClientSettings(yaml_client_settings(env))
    settings.update(env_security_settings(env))
    settings["bootstrap.servers"] = bootstrap_servers or bootstrap_servers_from(env)
    return settings


def bootstrap_servers() -> str:
    """KAFKA_BOOTSTRAP_SERVERS, else an error that names it. The pipeline never guesses a
    cluster: the local stack (`itel-dagster up`) sets the variable for what it starts."""
    return bootstrap_servers_from(os.environ)


def bootstrap_servers_from(env: Mapping[str, str]) -> str:
    configured = env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if configured:
        return configured
    raise ConfigError("KAFKA_BOOTSTRAP_SERVERS is not set: set it to the cluster's "
                      "host:port list (for a local broker, `itel-dagster kafka start` prints it)")


def default_partitions() -> int:
    """ITEL_KAFKA_PARTITIONS (default 3): partitions of topics created by the dev stack."""
    raw = os.environ.get("ITEL_KAFKA_PARTITIONS", "3")
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"ITEL_KAFKA_PARTITIONS must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"ITEL_KAFKA_PARTITIONS must be a positive integer, got {raw!r}")
    return value
