"""Post one alert to the configured webhook, and say what became of it.

Never raises and never retries: a webhook that is unset, unreachable, slow or failing costs at
most `timeout_seconds` and yields a Delivery saying why it was not sent. The URL itself is never
logged (a Slack webhook URL is a credential); only its host.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

import httpx

from itel_dagster.alerts.messages import Alert, payload_for, plain_text
from itel_dagster.settings.alerts import AlertSettings

logger = logging.getLogger("itel.alerts")

NOT_CONFIGURED = "ALERT_WEBHOOK_URL not set"


@dataclass(frozen=True)
class Delivery:
    sent: bool
    detail: str  # "sent to webhook <host> at <utc>" or "not sent: <reason>"


def webhook_host(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def post_alert(settings: AlertSettings, alert: Alert) -> Delivery:
    if settings.webhook_url is None:
        return Delivery(False, f"not sent: {NOT_CONFIGURED}")
    url = settings.webhook_url.get_secret_value()
    host = webhook_host(url)
    try:
        response = httpx.post(url, json=payload_for(alert, settings.format),
                              timeout=settings.timeout_seconds)
    except httpx.HTTPError as exc:
        # str(exc) of a connection error or timeout names no URL; the class says what failed.
        reason = f"webhook {host} unreachable ({type(exc).__name__}: {exc})"
        logger.warning("alert %s %s; the alert was: %s", alert.kind, reason, plain_text(alert))
        return Delivery(False, f"not sent: {reason}")
    except Exception as exc:  # noqa: BLE001 - an alert must never break the caller
        reason = f"webhook {host} failed ({type(exc).__name__}: {exc})"
        logger.exception("alert %s %s", alert.kind, reason)
        return Delivery(False, f"not sent: {reason}")
    if not response.is_success:
        reason = f"webhook {host} answered HTTP {response.status_code}"
        logger.warning("alert %s %s: %s", alert.kind, reason, response.text[:200])
        return Delivery(False, f"not sent: {reason}")
    logger.info("alert %s sent to webhook %s", alert.kind, host)
    return Delivery(True, f"sent to webhook {host} at {_utc_now()}")
