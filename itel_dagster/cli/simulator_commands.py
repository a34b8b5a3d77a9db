"""`itel-dagster simulators run|fault|requests|stats`: the ClaimX and iTel Cabinet simulators of the
dev stack, and their faults at run time. Besides `run`, it only calls a simulator's /_admin
endpoints, so pointing it at a real API changes nothing there.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import click
import httpx

from itel_dagster.devstack.simulators.claimx import ClaimxSimulator
from itel_dagster.devstack.simulators.itel import ItelSimulator
from itel_dagster.devstack.stack import CLAIMX_DEV_TOKEN, ITEL_DEV_TOKEN

# Where each simulator is when no --url is given: the variable the pipeline reads, else `run`'s.
DEFAULT_URLS = {
    "claimx": ("CLAIMX_API_BASE_URL", "http://127.0.0.1:8081"),
    "itel": ("ITEL_CABINET_API_BASE_URL", "http://127.0.0.1:8082"),
}

_which_argument = click.argument("which", type=click.Choice(sorted(DEFAULT_URLS)))
_url_option = click.option(
    "--url", default=None,
    help="Base URL of the simulator (default: $CLAIMX_API_BASE_URL or http://127.0.0.1:8081 "
         "for claimx, $ITEL_CABINET_API_BASE_URL or http://127.0.0.1:8082 for itel).",
)


def simulator_url(which: str, url: str | None) -> str:
    variable, fallback = DEFAULT_URLS[which]
    return (url or os.environ.get(variable, "").strip() or fallback).rstrip("/")


def admin_call(method: str, base_url: str, path: str, body: dict | None = None) -> Any:
    """One /_admin request; a ClickException naming the cause when it fails."""
    try:
        response = httpx.request(method, f"{base_url}/_admin/{path}", json=body, timeout=10)
    except httpx.TransportError as exc:
        raise click.ClickException(
            f"no simulator answering at {base_url} ({exc.__class__.__name__}: {exc})"
        ) from None
    if response.status_code >= 400:
        try:
            reason = response.json().get("detail") or response.json().get("error")
        except ValueError:
            reason = response.text[:200]
        raise click.ClickException(f"{base_url} answered {response.status_code}: {reason}")
    return response.json()


def echo_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2))


@click.group()
def simulators() -> None:
    """Loopback simulators of the ClaimX API and the iTel Cabinet API, with fault injection."""


@simulators.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--claimx-port", type=int, default=8081, show_default=True,
              help="Port of the ClaimX simulator (0: any free port).")
@click.option("--itel-port", type=int, default=8082, show_default=True,
              help="Port of the iTel Cabinet simulator (0: any free port).")
@click.option("--claimx-token", default=CLAIMX_DEV_TOKEN, show_default=True,
              help="Bearer token the ClaimX simulator accepts.")
@click.option("--itel-token", default=ITEL_DEV_TOKEN, show_default=True,
              help="Static bearer token the iTel simulator accepts (besides OAuth2 tokens).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random faults (error_rate), so a run repeats.")
def run(host, claimx_port, itel_port, claimx_token, itel_token, seed) -> None:
    """Run both simulators in the foreground until Ctrl-C or SIGTERM.

    ClaimX: GET /api/v1/tasks/{assignment_id}. iTel: POST /api/v1/tasks, POST
    /api/v1/tasks/batch (up to 500 tasks, 207 with a result per task) and POST /oauth/token.
    Both: /_admin/faults, /_admin/stats, /_admin/health; iTel also /_admin/requests.
    """
    claimx = ClaimxSimulator(host=host, port=claimx_port, token=claimx_token, seed=seed)
    itel = ItelSimulator(host=host, port=itel_port, token=itel_token, seed=seed)

    def on_term(signum, frame):  # SIGTERM takes the same clean path as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        for simulator, port in ((claimx, claimx_port), (itel, itel_port)):
            try:
                simulator.start()
            except OSError as exc:
                raise click.ClickException(
                    f"the {simulator.name} simulator cannot listen on {host}:{port} "
                    f"({exc.strerror}); pass another port, or 0 for any free one"
                ) from None
        click.echo(f"claimx  {claimx.url}  (bearer token {claimx_token})")
        click.echo(f"itel    {itel.url}  (bearer token {itel_token}; OAuth2 client "
                   f"{itel.client_id} / {itel.client_secret} at {itel.url}/oauth/token)")
        click.echo("simulators are up; Ctrl-C stops them")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        itel.stop()
        claimx.stop()
    click.echo("simulators stopped")


# The fault options of `fault`: (flag, fault plan key, type, help). Defaults live in FaultPlan.
FAULT_OPTIONS = [
    ("--latency-ms", "latency_ms", float, "Delay added to every request."),
    ("--error-rate", "error_rate", float,
     "Fraction (0..1) of requests answered with --error-status."),
    ("--error-status", "error_status", int, "Status of those errors (500)."),
    ("--burst-5xx", "burst_5xx", int, "The next N requests get 503."),
    ("--rate-limit", "rate_limited", int,
     "The next N requests get 429 with a Retry-After header."),
    ("--retry-after", "retry_after_seconds", float, "Seconds in that Retry-After header (1)."),
    ("--timeouts", "timeouts", int, "The next N requests hang, then close without an answer."),
    ("--timeout-seconds", "timeout_seconds", float, "How long those requests hang (30)."),
    ("--reset", "reset_connections", int,
     "The next N requests: the connection is reset, no answer."),
    ("--refuse-for", "refuse_for_seconds", float,
     "Close the listening socket (connections refused) for S seconds."),
    ("--seed", "seed", int, "Seed of --error-rate's random draws."),
]


def fault_options(command):
    for flag, key, kind, help_text in reversed(FAULT_OPTIONS):
        command = click.option(flag, key, type=kind, help=help_text)(command)
    return command


@simulators.command()
@_which_argument
@_url_option
@fault_options
@click.option("--wrong-auth/--right-auth", "wrong_auth", default=None,
              help="Expect another token, so every request gets 401 / back to normal.")
@click.option("--clear", is_flag=True, help="Clear every fault first (alone: no faults).")
def fault(which: str, url: str | None, clear: bool, **plan_changes) -> None:
    """Change the fault plan of the claimx or itel simulator and print the plan.

    Options given change their keys and leave the others; none prints the current plan.
    Admin endpoints are never faulted. Example: fault itel --rate-limit 3 --retry-after 2
    """
    base_url = simulator_url(which, url)
    changes = {key: value for key, value in plan_changes.items() if value is not None}
    plan = admin_call("DELETE", base_url, "faults") if clear else None
    if changes:
        plan = admin_call("POST", base_url, "faults", changes)
    echo_json(plan if plan is not None else admin_call("GET", base_url, "faults"))


@simulators.command()
@_url_option
def requests(url: str | None) -> None:
    """Print the iTel simulator's accepted requests, one JSON object a line, oldest first.

    Each has itel_id, received_at, idempotency_key, auth_via, auth_token_sha256 (SHA-256 of the
    bearer token), headers (Authorization masked), body and requests (POSTs of its
    Idempotency-Key: 1 + replays).
    """
    for record in admin_call("GET", simulator_url("itel", url), "requests"):
        click.echo(json.dumps(record))


@simulators.command()
@_which_argument
@_url_option
def stats(which: str, url: str | None) -> None:
    """Print request counts of the claimx or itel simulator, per route and status.

    Faults count too ("503", "429", "reset", "timeout"); admin requests do not.
    """
    echo_json(admin_call("GET", simulator_url(which, url), "stats"))
