"""The iTel Cabinet API as a Dagster resource: app.itel.yaml's settings as fields (built once per
process, resources/from_yaml.py), auth, the shared circuit breaker and the sender. The token and
the OAuth2 client secret are `dg.EnvVar` fields: Dagster reads them when a run launches, and they
never reach run config, logs or the UI."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import polars as pl
from pydantic import PrivateAttr

from itel_dagster.resources.circuit_breaker import CircuitBreaker
from itel_dagster.resources.itel_auth import BearerAuth, OAuth2ClientCredentialsAuth
from itel_dagster.resources.http_connection import HttpConnectionResource
from itel_dagster.resources.itel_sender import ItelSender, SendReport, SendRequest
from itel_dagster.settings.connections import ITEL_FILE, ItelConnectionSettings
from itel_dagster.settings.env_yaml import ConfigError
from itel_dagster.state import open_breaker_store

# A send round (the events whose outcomes are recorded together) holds this many events per
# connection: enough to keep max_concurrency lanes busy, few enough that a crash re-sends little.
ROUND_EVENTS_PER_CONNECTION = 16


def breaker_for(settings: ItelConnectionSettings, path: Path | None = None) -> CircuitBreaker:
    """The one breaker of the iTel connection, shared by every run process and the sensor."""
    return CircuitBreaker(
        open_breaker_store(path),  # SQLite under ITEL_STATE_DIR, or ITEL_STATE_URL's PostgreSQL
        failure_threshold=settings.circuit_breaker.failure_threshold,
        cool_down_seconds=settings.circuit_breaker.cool_down_seconds,
    )


def auth_for(settings: ItelConnectionSettings):
    if settings.auth_type == "oauth2_client_credentials":
        o = settings.oauth2
        return OAuth2ClientCredentialsAuth(o.token_url, o.client_id, o.client_secret, o.scope)
    return BearerAuth(settings.auth_token)


class ItelOAuth2(dg.Config):
    token_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = None  # dg.EnvVar("ITEL_OAUTH_CLIENT_SECRET") when set
    scope: str | None = None


class ItelBatch(dg.Config):
    enabled: bool = False
    endpoint: str = "/api/v1/tasks/batch"
    size: int = 50


class ItelCircuitBreaker(dg.Config):
    failure_threshold: int = 5
    cool_down_seconds: float = 30.0


class ItelApiResource(HttpConnectionResource):
    endpoint: str | None = None
    method: str | None = None
    rate_limit_per_second: float | None = None
    max_retry_after_seconds: float | None = None
    oauth2: ItelOAuth2 | None = None
    batch: ItelBatch | None = None
    circuit_breaker: ItelCircuitBreaker | None = None
    payload: dict[str, Any] | None = None
    breaker_path: str | None = None  # default: <ITEL_STATE_DIR>/itel_circuit_breaker.sqlite

    SETTINGS_FILE: ClassVar[str] = ITEL_FILE
    ROOT_KEY: ClassVar[str] = "itel_cabinet_api"
    SETTINGS_MODEL: ClassVar[type] = ItelConnectionSettings
    SECRET_FIELDS: ClassVar[frozenset[str]] = frozenset({"auth_token", "oauth2.client_secret"})
    OWN_FIELDS: ClassVar[frozenset[str]] = HttpConnectionResource.OWN_FIELDS | {"breaker_path"}

    _settings: ItelConnectionSettings | None = PrivateAttr(default=None)
    _sender: ItelSender | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.not_configured:
            return  # the iTel gate says why; a send raises it
        settings = self.settings()
        self._settings = settings
        self._sender = ItelSender(
            settings, self.breaker(),
            auth_for(settings),
            batch_endpoint=settings.batch.endpoint if settings.batch.enabled else None,
            batch_size=settings.batch.size,
        )

    def breaker(self) -> CircuitBreaker:
        """The shared breaker, with this connection's threshold and cool-down."""
        settings = self._settings or self.settings()
        return breaker_for(settings, Path(self.breaker_path) if self.breaker_path else None)

    def _ready(self) -> ItelConnectionSettings:
        if self.not_configured:
            raise ConfigError(self.not_configured)
        assert self._settings is not None, "resource used outside a run"
        return self._settings

    def payload_template(self) -> dict:
        return self._ready().payload

    def round_size(self) -> int:
        """At most this many events are sent before their outcomes reach the send ledger."""
        settings = self._ready()
        return settings.send_round_size or settings.max_concurrency * ROUND_EVENTS_PER_CONNECTION

    def send_rows(self, rows: pl.DataFrame) -> SendReport:
        """rows: event_id, assignment_id, kafka_offset and request_payload (JSON text)."""
        self._ready()
        assert self._sender is not None
        requests = [
            SendRequest(event_id=e, assignment_id=a, order=o, payload=p.encode())
            for e, a, o, p in rows.select(
                "event_id", "assignment_id", "kafka_offset", "request_payload").iter_rows()
        ]
        return self._sender.send(requests)
