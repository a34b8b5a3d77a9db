"""Typed settings of the two HTTP connections: ClaimX (lookup) and iTel Cabinet (send).

Tokens and client secrets are `SecretStr`: they print as '**********' in logs, reprs and the UI.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, SecretStr, model_validator

from itel_dagster.settings.env_yaml import load_yaml, parse_model
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
    headers: dict[str, str] = Field(default_factory=dict)

    @property
    def base(self) -> str:
        return str(self.base_url).rstrip("/")

    @model_validator(mode="after")
    def _token_for_bearer(self):
        if self.auth_type == "bearer" and not self.auth_token:
            raise ValueError("auth_type 'bearer' needs auth_token")
        return self


class ClaimxConnectionSettings(HttpConnectionSettings):
    task_path: str = "/api/v1/tasks/{assignment_id}"
    cache_ttl_seconds: float = Field(60.0, ge=0)

    @model_validator(mode="after")
    def _task_path_has_placeholder(self):
        if "{assignment_id}" not in self.task_path:
            raise ValueError("task_path must contain {assignment_id}")
        return self


class OAuth2ClientCredentials(_Strict):
    token_url: HttpUrl
    client_id: str
    client_secret: SecretStr
    scope: str | None = None


class ItelConnectionSettings(HttpConnectionSettings):
    endpoint: str = "/api/v1/tasks"
    method: Literal["POST", "PUT"] = "POST"
    rate_limit_per_second: float = Field(20.0, gt=0)
    oauth2: OAuth2ClientCredentials | None = None

    @model_validator(mode="after")
    def _oauth2_settings(self):
        if self.auth_type == "oauth2_client_credentials" and self.oauth2 is None:
            raise ValueError("auth_type 'oauth2_client_credentials' needs the oauth2 section")
        return self


CLAIMX_FILE = "plugins/shared/connections/claimx.yaml"
ITEL_FILE = "plugins/shared/connections/app.itel.yaml"


def load_claimx_connection(env=None) -> ClaimxConnectionSettings:
    document = load_yaml(config_dir() / CLAIMX_FILE, env)
    return parse_model(ClaimxConnectionSettings, document, root_key="claimx_api")


def load_itel_connection(env=None) -> ItelConnectionSettings:
    document = load_yaml(config_dir() / ITEL_FILE, env)
    return parse_model(ItelConnectionSettings, document, root_key="itel_cabinet_api")
