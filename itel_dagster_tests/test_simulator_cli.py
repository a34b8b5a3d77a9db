"""`itel-dagster simulators ...` against the session's running simulators (CliRunner), and `run`
as a real process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from click.testing import CliRunner

from itel_dagster.cli import main
from itel_dagster.devstack.claimx_world import FIRST_ASSIGNMENT_ID
from itel_dagster_tests.fixtures.simulator_fixtures import itel_task_payload

TASK_PATH = f"/api/v1/tasks/{FIRST_ASSIGNMENT_ID}"
CLAIMX_AUTH = {"Authorization": "Bearer claimx-dev-token"}


def cli(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, ["simulators", *args], env=env)


def claimx_status(simulator) -> int:
    return httpx.get(f"{simulator.url}{TASK_PATH}", headers=CLAIMX_AUTH).status_code


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("command, says", [
    ([], "Loopback simulators of the ClaimX API and the iTel Cabinet API"),
    (["run"], "until Ctrl-C or SIGTERM"),
    (["fault"], "--rate-limit"),
    (["requests"], "accepted requests"),
    (["stats"], "per route and status"),
])
def test_every_command_has_a_help(command, says):
    result = cli(*command, "--help")

    assert result.exit_code == 0
    assert says in result.output


def test_fault_sets_the_plan_the_simulator_obeys(claimx):
    result = cli("fault", "claimx", "--url", claimx.url, "--burst-5xx", "2")

    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["burst_5xx"] == 2
    assert [claimx_status(claimx) for _ in range(3)] == [503, 503, 200]


def test_fault_options_map_to_the_plan_keys(itel):
    result = cli("fault", "itel", "--url", itel.url, "--latency-ms", "1", "--error-rate", "0.25",
                 "--error-status", "502", "--rate-limit", "4", "--retry-after", "9",
                 "--timeouts", "5", "--timeout-seconds", "2.5", "--reset", "6", "--wrong-auth",
                 "--seed", "42")

    assert result.exit_code == 0, result.output
    assert itel.faults() == {
        "latency_ms": 1.0, "error_rate": 0.25, "error_status": 502, "burst_5xx": 0,
        "rate_limited": 4, "retry_after_seconds": 9, "timeouts": 5, "timeout_seconds": 2.5,
        "reset_connections": 6, "refuse_for_seconds": 0.0, "wrong_auth": True, "seed": 42,
    }
    assert cli("fault", "itel", "--url", itel.url, "--right-auth").exit_code == 0
    assert itel.faults()["wrong_auth"] is False


def test_fault_clear_and_plain_fault_prints_the_plan(claimx):
    claimx.set_faults(latency_ms=50, burst_5xx=3)

    shown = cli("fault", "claimx", "--url", claimx.url)
    cleared = cli("fault", "claimx", "--url", claimx.url, "--clear")
    cleared_and_set = cli("fault", "claimx", "--url", claimx.url, "--clear", "--reset", "1")

    assert json.loads(shown.output)["burst_5xx"] == 3
    assert json.loads(cleared.output)["latency_ms"] == 0
    plan = json.loads(cleared_and_set.output)
    assert (plan["reset_connections"], plan["burst_5xx"], plan["latency_ms"]) == (1, 0, 0)


def test_fault_finds_the_simulator_through_the_environment(claimx):
    result = cli("fault", "claimx", "--rate-limit", "1",
                 env={"CLAIMX_API_BASE_URL": claimx.url + "/"})

    assert result.exit_code == 0, result.output
    assert claimx_status(claimx) == 429


@pytest.mark.slow  # the port stays closed for a while
def test_fault_refuse_for_closes_the_port_for_a_while(claimx):
    result = cli("fault", "claimx", "--url", claimx.url, "--refuse-for", "0.5")

    assert result.exit_code == 0, result.output
    with pytest.raises(httpx.ConnectError):
        claimx_status(claimx)
    time.sleep(0.7)
    assert claimx_status(claimx) == 200


def test_fault_with_a_bad_value_fails_naming_it(claimx):
    result = cli("fault", "claimx", "--url", claimx.url, "--error-rate", "2")

    assert result.exit_code == 1
    assert "answered 400" in result.output
    assert "error_rate" in result.output
    assert claimx.faults()["error_rate"] == 0


def test_no_simulator_at_the_url_is_a_clear_error():
    url = f"http://127.0.0.1:{closed_port()}"

    result = cli("stats", "claimx", "--url", url)

    assert result.exit_code == 1
    assert f"no simulator answering at {url}" in result.output


def test_requests_prints_one_json_line_per_accepted_send(itel):
    for n, key in enumerate(["a", "b"]):
        httpx.post(f"{itel.url}/api/v1/tasks", json=itel_task_payload(1_000_000 + n), headers={
            "Authorization": "Bearer itel-dev-token", "Idempotency-Key": key})

    result = cli("requests", "--url", itel.url)

    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["idempotency_key"] for line in lines] == ["a", "b"]
    assert lines == itel.accepted_requests()


def test_stats_prints_counts_per_route_and_status(claimx):
    claimx_status(claimx)
    claimx_status(claimx)

    result = cli("stats", "claimx", "--url", claimx.url)

    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "total": 2,
        "routes": {"GET /api/v1/tasks/{assignment_id}": {"total": 2, "by_status": {"200": 2}}},
    }


def test_run_says_which_port_is_taken(claimx):
    result = cli("run", "--claimx-port", str(claimx.port), "--itel-port", "0")

    assert result.exit_code == 1
    assert f"claimx simulator cannot listen on 127.0.0.1:{claimx.port}" in result.output


@pytest.mark.slow
def test_run_serves_both_until_sigterm():
    process = subprocess.Popen(
        [sys.executable, "-m", "itel_dagster.cli", "simulators", "run", "--claimx-port", "0",
         "--itel-port", "0", "--claimx-token", "run-token"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        urls = {}
        for line in process.stdout:
            if line.startswith(("claimx", "itel")):
                name, url = line.split()[:2]
                urls[name] = url
            if line.startswith("simulators are up"):
                break
        task = httpx.get(f"{urls['claimx']}{TASK_PATH}",
                         headers={"Authorization": "Bearer run-token"})
        health = httpx.get(f"{urls['itel']}/_admin/health")

        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert task.status_code == 200
    assert health.json()["simulator"] == "itel"
    assert exit_code == 0
    assert "simulators stopped" in process.stdout.read()
