"""`itel-dagster up`: the whole local stack comes up with one command and goes down with SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from itel_dagster.kafka.offsets import group_progress
from itel_dagster.settings.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow  # starts `itel-dagster up`: a broker, the simulators and Dagster


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_up_starts_kafka_simulators_publisher_and_dagster_then_stops(tmp_path):
    dagster_port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env.update(ITEL_STATE_DIR=str(tmp_path / "var"), ITEL_DELTA_ROOT=str(tmp_path / "delta"))
    log = open(tmp_path / "up.log", "w+")
    stack = subprocess.Popen(
        [sys.executable, "-m", "itel_dagster.cli", "up", "--dagster-port", str(dagster_port),
         "--claimx-port", "0", "--itel-port", "0", "--kafka-port", "0",
         "--demo-rate", "5", "--demo-backlog", "20"],
        cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        def output() -> str:
            return Path(log.name).read_text()

        wait_for(lambda: "stack is up" in output(), 180, f"the stack to start:\n{output()}")
        claimx_url = re.search(r"claimx\s+(http://\S+)", output()).group(1)
        itel_url = re.search(r"itel\s+(http://\S+)", output()).group(1)
        assert httpx.get(f"{claimx_url}/_admin/health").status_code == 200
        assert httpx.get(f"{itel_url}/_admin/health").status_code == 200
        task = httpx.get(f"{claimx_url}/api/v1/tasks/1000001",
                         headers={"Authorization": "Bearer claimx-dev-token"})
        assert task.status_code == 200

        broker = json.loads((tmp_path / "var/kafka/broker.json").read_text())
        bootstrap = broker["bootstrap_servers"]

        def published() -> int:
            progress = group_progress(bootstrap, "up-test", "itel.cabinet.task.tracking")
            return sum(p.high for p in progress)

        # The backlog, then continuous demo events.
        first = wait_for(lambda: published() >= 20 and published(), 60, "demo events")
        wait_for(lambda: published() > first, 30, "continuous demo events")

        info = wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{dagster_port}/server_info", timeout=5),
            180, "dagster dev to answer")
        assert info.status_code == 200
        assert (tmp_path / "var/dagster_home/dagster.yaml").resolve() == PROJECT_ROOT / "dagster.yaml"
        # The metrics endpoint it started serves both groups' lag.
        metrics_url = re.search(r"metrics\s+(http://\S+)", output()).group(1)
        metrics = wait_for(lambda: httpx.get(metrics_url, timeout=10), 60, "the metrics endpoint")
        lag_lines = [line for line in metrics.text.splitlines() if line.startswith("itel_consumer_lag{")]
        assert any("itel_cabinet_api_worker_group" in line for line in lag_lines)
        assert any("itel_cabinet_tracking_worker_group" in line for line in lag_lines)
    finally:
        stack.send_signal(signal.SIGTERM)
        code = stack.wait(timeout=90)
    assert code == 0, Path(log.name).read_text()
    assert "stopping the stack" in Path(log.name).read_text()
    assert not (tmp_path / "var/kafka/broker.json").exists()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", dagster_port)) != 0
