"""`itel-dagster breaker status|open|close`: the iTel circuit breaker that every API run and the
API worker's sensor share (one SQLite file under ITEL_STATE_DIR).

Opened by hand, no request goes to iTel and the API sensor starts no run; events wait in Kafka.
Command-line wiring only: the breaker lives in itel_dagster.resources.circuit_breaker.
"""

from __future__ import annotations

import time

import click

from itel_dagster.resources.circuit_breaker import (
    FOREVER,
    BreakerState,
    CircuitBreaker,
    until_text,
    utc_text,
)


def _breaker() -> CircuitBreaker:
    from itel_dagster.resources.itel_api import breaker_for
    from itel_dagster.settings.connections import load_itel_connection
    from itel_dagster.settings.env_yaml import ConfigError

    try:
        return breaker_for(load_itel_connection())
    except ConfigError as exc:
        raise click.ClickException(f"iTel connection not configured: {exc}") from None


def status_lines(state: BreakerState, path) -> list[str]:
    opened_at = "-" if state.opened_at is None else utc_text(state.opened_at)
    lines = [f"state: {state.state}",
             f"consecutive failures: {state.consecutive_failures}",
             f"opened at: {opened_at}"]
    if state.state != "closed":
        lines.append(f"no sends until: {until_text(state.reopens_at)}")
    lines += [f"cause: {state.cause or '-'}",
              f"openings in total: {state.opened_count}",
              f"state file: {path}"]
    return lines


def _show(breaker: CircuitBreaker) -> None:
    click.echo("\n".join(status_lines(breaker.state(), breaker.path)))


@click.group()
def breaker() -> None:
    """The iTel circuit breaker: see it, open it by hand, close it."""


@breaker.command("status")
def status_command() -> None:
    """State, consecutive failures, when sends resume (UTC) and the cause."""
    _show(_breaker())


@breaker.command("open")
@click.option("--for", "seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Hold it open this many seconds, then one probe decides [default: until "
                   "`itel-dagster breaker close`].")
@click.option("--reason", default="no reason given", show_default=True,
              help="Why: shown as its cause in the sensor's skip reason, the alert and status.")
def open_command(seconds: float | None, reason: str) -> None:
    """Open it now: no request goes to iTel and the API sensor starts no run; events wait in
    Kafka. Already open until later, it stays open until then."""
    target = _breaker()
    until = FOREVER if seconds is None else time.time() + seconds
    target.hold_open(until, f"opened by hand: {reason}")
    _show(target)


@breaker.command("close")
def close_command() -> None:
    """Close it now, whatever its state: sends and API runs resume at the next sensor tick."""
    target = _breaker()
    target.close()
    _show(target)
