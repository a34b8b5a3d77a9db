"""The settings every Kafka client of the package is built with, checked once per process.

librdkafka retries a refused login or an untrusted certificate until the caller's timeout and then
reports only "transport failure" / "timed out". On a secured cluster the first client of a
process therefore probes the connection in short slices and fails at once with the broker's own
reason (one line, never a secret) instead of hanging.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from itel_dagster.settings.kafka import KafkaClientSettings, client_settings

PROBE_SECONDS = 15.0
_REFUSED = {
    KafkaError._AUTHENTICATION: ("refused the login",
                                 "check KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD"),
    KafkaError._SSL: ("TLS handshake failed", "check KAFKA_SSL_CA_LOCATION"),
}
_checked: set[tuple] = set()
_checked_lock = threading.Lock()


class KafkaAccessDenied(RuntimeError):
    """The cluster refused this client's credentials or certificate: retrying will not help."""


# What a Kafka function of the package is given: the servers (its settings then come from
# kafka.yaml and the environment), or the whole settings of a KafkaResource.
KafkaTarget = str | Mapping[str, object]


def client_config(bootstrap_servers: KafkaTarget | None = None,
                  **overrides) -> KafkaClientSettings:
    """The target's settings (for servers alone: client_settings()) plus the caller's own; on a
    SASL/SSL cluster the connection is checked first (once per process and settings) and
    KafkaAccessDenied raised at once."""
    if isinstance(bootstrap_servers, Mapping):
        settings = KafkaClientSettings(bootstrap_servers)
    else:
        settings = client_settings(bootstrap_servers)
    if _is_secured(settings):
        check_access(settings)
    settings.update(overrides)
    return settings


def _is_secured(settings: dict) -> bool:
    protocol = str(settings.get("security.protocol", "plaintext")).lower()
    return protocol != "plaintext"


def _one_line(error: KafkaError, servers: str) -> str:
    what, hint = _REFUSED[error.code()]
    reason = re.sub(r"^\S+://\S+?/\S+: ", "", error.str())  # "sasl_ssl://host:port/bootstrap: "
    reason = re.sub(r" \(after \d+ms in state \w+\)$", "", reason)
    return f"Kafka at {servers} {what}: {reason} ({hint})"


def check_access(settings: dict, timeout: float = PROBE_SECONDS) -> None:
    """Raise KafkaAccessDenied when the cluster refuses the login or the certificate. Any other
    outcome (answer, or no answer by `timeout`) returns: the caller's own call reports it."""
    key = tuple(sorted((k, str(v)) for k, v in settings.items()))
    with _checked_lock:
        if key in _checked:
            return
    refused: list[KafkaError] = []

    def on_error(error: KafkaError) -> None:
        if error.code() in _REFUSED:
            refused.append(error)

    admin = AdminClient({**settings, "error_cb": on_error})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=0.5)
        except KafkaException:
            admin.poll(0)  # serves error_cb
            if refused:
                raise KafkaAccessDenied(
                    _one_line(refused[0], str(settings.get("bootstrap.servers")))) from None
            continue
        with _checked_lock:
            _checked.add(key)
        return


def forget_checks() -> None:
    """After a failure the next client probes again (credentials or certificates may change)."""
    with _checked_lock:
        _checked.clear()


def target_key(target: KafkaTarget) -> str:
    """A hashable name of a target, for caches keyed by cluster (never shows a secret's value:
    it is hashed)."""
    if isinstance(target, Mapping):
        items = tuple(sorted((str(k), str(v)) for k, v in target.items()))
        return f"{target.get('bootstrap.servers')}#{hash(items):x}"
    return target
