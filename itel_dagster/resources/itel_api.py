"""The iTel Cabinet API as a Dagster resource: settings of app.itel.yaml, auth, the shared circuit
breaker and the sender. Settings are read when a run starts, so the code location loads without
them; secrets stay inside SecretStr and never reach run config or logs."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import PrivateAttr

from itel_dagster.resources.circuit_breaker import CircuitBreaker
from itel_dagster.resources.itel_auth import BearerAuth, OAuth2ClientCredentialsAuth
from itel_dagster.resources.itel_sender import ItelSender, SendReport, SendRequest
from itel_dagster.settings.connections import ItelConnectionSettings, load_itel_connection
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


class ItelApiResource(dg.ConfigurableResource):
    breaker_path: str | None = None  # default: <ITEL_STATE_DIR>/itel_circuit_breaker.sqlite

    _settings: ItelConnectionSettings | None = PrivateAttr(default=None)
    _sender: ItelSender | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        settings = load_itel_connection()
        breaker = breaker_for(settings, Path(self.breaker_path) if self.breaker_path else None)
        self._settings = settings
        self._sender = ItelSender(
            settings, breaker, auth_for(settings),
            batch_endpoint=settings.batch.endpoint if settings.batch.enabled else None,
            batch_size=settings.batch.size,
        )

    def payload_template(self) -> dict:
        assert self._settings is not None, "resource used outside a run"
        return self._settings.payload

    def round_size(self) -> int:
        """At most this many events are sent before their outcomes reach the send ledger."""
        assert self._settings is not None, "resource used outside a run"
        return (self._settings.send_round_size
                or self._settings.max_concurrency * ROUND_EVENTS_PER_CONNECTION)

    def send_rows(self, rows: pl.DataFrame) -> SendReport:
        """rows: event_id, assignment_id, kafka_offset and request_payload (JSON text)."""
        assert self._sender is not None, "resource used outside a run"
        requests = [
            SendRequest(event_id=e, assignment_id=a, order=o, payload=p.encode())
            for e, a, o, p in rows.select(
                "event_id", "assignment_id", "kafka_offset", "request_payload").iter_rows()
        ]
        return self._sender.send(requests)
