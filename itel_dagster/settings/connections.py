"""Typed settings of the two HTTP connections: ClaimX (lookup) and iTel Cabinet (send).

Tokens and client secrets are `SecretStr`: they print as '**********' in logs, reprs and the UI.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, SecretStr, field_validator, model_validator

from itel_dagster.settings.env_yaml import load_yaml_once, parse_model
from itel_dagster.settings.paths import config_dir


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpConnectionSettings(_Strict):
    name: str
    base_url: HttpUrl
    auth_type: Literal["bearer", "oauth2_client_credentials", "none"] = "bearer"
    auth_token: SecretStr | None = None
    connect_timeout_seconds: float = Field(5.0, gt=0)
    timeout_seconds: float = Field(30.0, gt=0)
    max_retries: int = Field(3, ge=0)
    retry_backoff_base: float = Field(2.0, ge=0)
    retry_backoff_max: float = Field(60.0, ge=0)
    max_concurrency: int = Field(8, ge=1)
    # Events sent before their outcomes reach the send ledger (one ledger MERGE a round): what a
    # crash can re-POST at most. None: max_concurrency x 16.
    send_round_size: int | None = Field(None, ge=1)
    headers: dict[str, str] = Field(default_factory=dict)

    @property
    def base(self) -> str:
        return str(self.base_url).rstrip("/")

    token_variable: ClassVar[str] = "the token variable"

    @model_validator(mode="after")
    def _token_for_bearer(self):
        if self.auth_type == "bearer" and not self.auth_token:
            raise ValueError(f"auth_type 'bearer' needs auth_token: set {self.token_variable}")
        return self


class ClaimxConnectionSettings(HttpConnectionSettings):
    token_variable: ClassVar[str] = "CLAIMX_API_TOKEN"
    task_path: str = "/api/v1/tasks/{assignment_id}"
    cache_ttl_seconds: float = Field(60.0, ge=0)

    @model_validator(mode="after")
    def _task_path_has_placeholder(self):
        if "{assignment_id}" not in self.task_path:
            raise ValueError("task_path must contain {assignment_id}")
        return self


class OAuth2ClientCredentials(_Strict):
    """Empty values (unset ITEL_OAUTH_* variables) are allowed unless OAuth2 is the auth_type."""

    token_url: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    scope: str | None = None

    @field_validator("token_url", "client_id", "scope", "client_secret", mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        return value or None


class BatchSettings(_Strict):
    enabled: bool = False
    endpoint: str = "/api/v1/tasks/batch"
    size: int = Field(50, ge=1, le=500)


class CircuitBreakerSettings(_Strict):
    failure_threshold: int = Field(5, ge=1)
    cool_down_seconds: float = Field(30.0, ge=0)


PayloadSource = str | list[str]


def _check_sources(template: dict, path: str = "payload") -> None:
    for key, source in template.items():
        if isinstance(source, dict):
            _check_sources(source, f"{path}.{key}")
            continue
        for one in source if isinstance(source, list) else [source]:
            if not isinstance(one, str) or not (
                one.startswith(("event.", "claimx.", "=")) and len(one) > 1
            ):
                raise ValueError(
                    f"{path}.{key}: source {one!r} must be event.<field>, event.task.<key>, "
                    "claimx.<path> or =<literal>"
                )


DEFAULT_PAYLOAD = {
    "task_id": "event.task_id",
    "assignment_id": "event.assignment_id",
    "project_id": "event.project_id",
    "task_status": "event.task_status",
    "repair_details": {
        "cabinet_id": ["claimx.custom_fields.cabinet_id", "event.task.cabinet_id"],
        "technician_notes": ["claimx.notes", "event.task.technician_notes"],
    },
    "source_system": "=claimx",
}


class ItelConnectionSettings(HttpConnectionSettings):
    token_variable: ClassVar[str] = "ITEL_CABINET_API_TOKEN"
    endpoint: str = "/api/v1/tasks"
    method: Literal["POST", "PUT"] = "POST"
    rate_limit_per_second: float = Field(20.0, gt=0)
    # A longer Retry-After is not slept: the breaker opens until then (events wait in Kafka).
    max_retry_after_seconds: float = Field(60.0, ge=0)
    oauth2: OAuth2ClientCredentials = OAuth2ClientCredentials()
    batch: BatchSettings = BatchSettings()
    circuit_breaker: CircuitBreakerSettings = CircuitBreakerSettings()
    payload: dict = Field(default_factory=lambda: dict(DEFAULT_PAYLOAD))

    @field_validator("auth_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value):
        return value or None

    @model_validator(mode="after")
    def _auth_settings(self):
        if self.auth_type == "oauth2_client_credentials":
            o = self.oauth2
            if not (o.token_url and o.client_id and o.client_secret):
                raise ValueError(
                    "auth_type 'oauth2_client_credentials' needs oauth2.token_url, client_id and "
                    "client_secret: set ITEL_OAUTH_TOKEN_URL, ITEL_OAUTH_CLIENT_ID, "
                    "ITEL_OAUTH_CLIENT_SECRET"
                )
        if self.circuit_breaker.failure_threshold > self.max_retries + 1:
            # Otherwise an outage dead-letters the first events (their retries run out before
            # the breaker opens) instead of leaving them in Kafka.
            raise ValueError(
                f"circuit_breaker.failure_threshold ({self.circuit_breaker.failure_threshold}) "
                f"must be at most max_retries + 1 ({self.max_retries + 1})"
            )
        _check_sources(self.payload)
        return self


CLAIMX_FILE = "plugins/shared/connections/claimx.yaml"
ITEL_FILE = "plugins/shared/connections/app.itel.yaml"


def load_claimx_connection(env=None) -> ClaimxConnectionSettings:
    document = load_yaml_once(config_dir() / CLAIMX_FILE, env)
    return parse_model(ClaimxConnectionSettings, document, root_key="claimx_api")


def load_itel_connection(env=None) -> ItelConnectionSettings:
    document = load_yaml_once(config_dir() / ITEL_FILE, env)
    return parse_model(ItelConnectionSettings, document, root_key="itel_cabinet_api")
