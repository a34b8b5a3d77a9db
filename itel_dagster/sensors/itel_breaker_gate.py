"""Whether the API worker's sensor may start runs: not while iTel's circuit breaker is open, nor
while the iTel connection is not configured (a run would only fail). Events wait in Kafka."""

from __future__ import annotations

from itel_dagster.resources.circuit_breaker import until_text
from itel_dagster.resources.itel_api import ItelApiResource


def itel_breaker_gate(itel: ItelApiResource) -> str | None:
    """None when runs may start, else the reason shown as the sensor's skip reason. `itel` is the
    code location's iTel resource, which Dagster injects into the sensor."""
    if itel.not_configured:
        return f"iTel connection not configured: {itel.not_configured}"
    breaker = itel.breaker()
    if breaker.is_open_now():
        state = breaker.state()
        cause = state.cause or f"{state.consecutive_failures} failed attempts"
        return f"iTel circuit breaker open ({cause}); no sends until {until_text(state.reopens_at)}"
    return None
