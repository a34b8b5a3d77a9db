"""Whether the API worker's sensor may start runs: not while iTel's circuit breaker is open, nor
while the iTel connection is not configured (a run would only fail). Events wait in Kafka."""

from __future__ import annotations

from itel_dagster.resources.circuit_breaker import until_text
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
        cause = state.cause or f"{state.consecutive_failures} failed attempts"
        return f"iTel circuit breaker open ({cause}); no sends until {until_text(state.reopens_at)}"
    return None
