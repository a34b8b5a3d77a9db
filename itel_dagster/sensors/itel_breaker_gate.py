"""Whether the API worker's sensor may start runs: not while iTel's circuit breaker is open, nor
while the iTel connection is not configured (a run would only fail). Events wait in Kafka."""

from __future__ import annotations

from datetime import datetime, timezone

from itel_dagster.resources.itel_api import breaker_for
from itel_dagster.settings.connections import load_itel_connection
from itel_dagster.settings.env_yaml import ConfigError


def itel_breaker_gate() -> str | None:
    """None when runs may start, else the reason shown as the sensor's skip reason."""
    try:
        settings = load_itel_connection()
    except ConfigError as exc:
        return f"iTel connection not configured: {exc}"
    breaker = breaker_for(settings)
    if breaker.is_open_now():
        state = breaker.state()
        until = datetime.fromtimestamp(state.reopens_at, tz=timezone.utc).isoformat(
            timespec="seconds") if state.reopens_at else "the cool-down ends"
        return (f"iTel circuit breaker open after {state.consecutive_failures} failed attempts; "
                f"no sends until {until}")
    return None
