"""The Kafka cluster of the pipeline as a Dagster resource: KAFKA_BOOTSTRAP_SERVERS, the `client`
map of connections/kafka.yaml and the KAFKA_* security variables as fields, built once per process
(resources/from_yaml.py). Secrets (sasl.password, key passwords) are `dg.EnvVar` fields when a
variable holds them. Brokers are reached only when a method is called.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from datetime import date

import dagster as dg

from itel_dagster.kafka.client_config import KafkaAccessDenied
from itel_dagster.kafka.day_window import DayWindow, day_windows
from itel_dagster.kafka.offsets import commit_offsets, group_progress
from itel_dagster.kafka.range_reader import READ_STALL_SECONDS, RangeRead, read_range
from itel_dagster.kafka.results_producer import ResultsProducer
from itel_dagster.kafka.results_transaction import ResultsTransaction
from itel_dagster.resources.secret_fields import secret_field
from itel_dagster.settings.env_yaml import load_yaml_once
from itel_dagster.settings.kafka import (
    ENV_SETTINGS,
    KAFKA_FILE,
    SECRET_SETTINGS,
    KafkaClientSettings,
    env_security_settings,
    yaml_client_settings,
)
from itel_dagster.settings.kafka import bootstrap_servers as configured_bootstrap_servers
from itel_dagster.settings.paths import config_dir

# librdkafka's secret settings, each a field of its own (sasl.password -> sasl_password).
SECRET_FIELDS = {key: key.replace(".", "_") for key in sorted(SECRET_SETTINGS)}


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@contextmanager
def _refusal_fails_the_step():
    """A refused login or certificate fails the step at once with its one-line reason: the
    ops' retry policies would only repeat it."""
    try:
        yield
    except KafkaAccessDenied as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None


class KafkaResource(dg.ConfigurableResource):
    # None: KAFKA_BOOTSTRAP_SERVERS when a client is made (an error naming it when unset).
    bootstrap_servers: str | None = None
    # librdkafka settings but the secret ones; None: read from kafka.yaml and the environment
    # when a client is made (a resource not built by from_settings).
    client: dict[str, str] | None = None
    sasl_password: str | None = None
    sasl_jaas_config: str | None = None
    sasl_oauthbearer_client_secret: str | None = None
    sasl_oauthbearer_config: str | None = None
    ssl_certificate_pem: str | None = None
    ssl_key_password: str | None = None
    ssl_key_pem: str | None = None
    ssl_keystore_password: str | None = None
    # kafka.yaml and its content's hash when built from it (resources/from_yaml.py).
    built_from: str | None = None

    @classmethod
    def from_settings(cls, env: Mapping[str, str], **own) -> "KafkaResource":
        """The cluster as kafka.yaml and the KAFKA_* variables of `env` say: a secret taken from
        a variable becomes its dg.EnvVar, a literal one a plain string."""
        path = config_dir() / KAFKA_FILE
        document = load_yaml_once(path, env) if path.exists() else None
        settings = {k: _text(v) for k, v in yaml_client_settings(env).items()}
        secrets = {field: secret_field(document, f"client.{key}", settings.pop(key, None), env)
                   for key, field in SECRET_FIELDS.items() if key in settings}
        overrides = env_security_settings(env)
        variable_of = {key: name for name, key in ENV_SETTINGS.items()}
        for key, value in overrides.items():
            if key in SECRET_FIELDS:
                secrets[SECRET_FIELDS[key]] = dg.EnvVar(variable_of[key])
            else:
                settings[key] = value
        return cls(bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip() or None,
                   client=settings, **secrets, **own)

    def servers(self) -> str:
        return self.bootstrap_servers or configured_bootstrap_servers()

    def settings(self) -> KafkaClientSettings | str:
        """What every client of this resource is built from: its librdkafka settings (masked
        when printed), or for a resource not built from the files, the servers alone."""
        if self.client is None:
            return self.servers()
        settings = KafkaClientSettings(self.client)
        for key, field in SECRET_FIELDS.items():
            if getattr(self, field) is not None:
                settings[key] = getattr(self, field)
        settings["bootstrap.servers"] = self.servers()
        return settings

    def read_range(self, topic: str, partition: int, start: int, end: int,
                   stall_seconds: float = READ_STALL_SECONDS, max_bytes: int | None = None,
                   first_record_always: bool = True, fetch_records: int = 10_000) -> RangeRead:
        with _refusal_fails_the_step():
            return read_range(self.settings(), topic, partition, start, end,
                              stall_seconds=stall_seconds, max_bytes=max_bytes,
                              first_record_always=first_record_always,
                              fetch_records=fetch_records)

    def results_producer(self, client_id: str) -> ResultsProducer:
        with _refusal_fails_the_step():
            return ResultsProducer(self.settings(), client_id=client_id)

    def results_transaction(self, transactional_id: str, client_id: str) -> ResultsTransaction:
        with _refusal_fails_the_step():
            return ResultsTransaction(self.settings(), transactional_id, client_id=client_id)

    def commit(self, group: str, topic: str, next_offsets: dict[int, int]) -> dict[int, int]:
        with _refusal_fails_the_step():
            return commit_offsets(self.settings(), group, topic, next_offsets)

    def progress(self, group: str, topic: str):
        with _refusal_fails_the_step():
            return group_progress(self.settings(), group, topic)

    def day_windows(self, topic: str, day: date) -> list[DayWindow]:
        with _refusal_fails_the_step():
            return day_windows(self.settings(), topic, day)
