"""`python -m itel_dagster_bench.solo_catch_up` on the session broker: the chosen worker catches up
through Dagster alone (the other worker starts no run) and its figures are reported. Timings are
printed, never asserted."""

import json
import os
import subprocess
import sys

import pytest

from itel_dagster.settings.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow  # runs the bench as a process (kafka: from its fixture)


def test_one_worker_catches_up_alone_and_the_other_starts_no_run(kafka_bootstrap, tmp_path):
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "ITEL_STATE_DIR": str(tmp_path / "var"), "ITEL_DELTA_ROOT": str(tmp_path / "delta")}
    finished = subprocess.run(
        [sys.executable, "-m", "itel_dagster_bench.solo_catch_up", "--worker", "tracking",
         "--events", "300", "--work-dir", str(tmp_path / "work")],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)

    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    lines = finished.stdout.splitlines()
    first = max(i for i, line in enumerate(lines) if line == "{")  # the printed JSON, last
    result = json.loads("\n".join(lines[first:]))
    assert result["events"] == 300
    assert result["runs_by_worker"]["api"] == 0  # its group was committed to the end first
    tracking = result["figures"]["tracking"]
    assert tracking["runs"] >= 1 and tracking["failed_runs"] == 0
    assert tracking["events_per_second"] > 0 and tracking["ratio_to_in_process"] is None
    cpu = tracking["cpu_seconds"]
    assert cpu["tracking_runs"] > 0 and "api_runs" not in cpu
    assert cpu["daemon"] > 0 and cpu["code_server"] > 0
    assert set(result["figures"]) == {"tracking"}
