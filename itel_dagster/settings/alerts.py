"""Typed settings of the alert webhook, read from config/plugins/shared/alerts.yaml.

An empty webhook_url is valid: alerting is off and every alert says so instead of being sent.
The URL is a `SecretStr` (a Slack webhook URL is its own credential): it never prints.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from itel_dagster.settings.env_yaml import load_yaml, parse_model
from itel_dagster.settings.paths import config_dir

ALERTS_FILE = "plugins/shared/alerts.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BreakerAlertSettings(_Strict):
    enabled: bool = True
    notify_recovered: bool = True


class LagAlertSettings(_Strict):
    enabled: bool = True
    threshold: int = Field(10_000, ge=0)
    for_seconds: float = Field(300.0, ge=0)
    notify_recovered: bool = True


class AlertSettings(_Strict):
    webhook_url: SecretStr | None = None
    format: Literal["slack", "generic"] = "slack"
    ui_base_url: str = "http://localhost:3000"
    timeout_seconds: float = Field(5.0, gt=0, le=30)
    circuit_breaker: BreakerAlertSettings = BreakerAlertSettings()
    lag: LagAlertSettings = LagAlertSettings()

    @field_validator("webhook_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        return (value or "").strip() or None

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: SecretStr | None):
        if value is not None and not value.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL (ALERT_WEBHOOK_URL)")
        return value

    @field_validator("ui_base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    def run_url(self, run_id: str) -> str:
        return f"{self.ui_base_url}/runs/{run_id}"


def load_alert_settings(env=None) -> AlertSettings:
    document = load_yaml(config_dir() / ALERTS_FILE, env)
    return parse_model(AlertSettings, document, root_key="alerts")
