"""`itel-dagster bench --smoke` on the session broker: it completes, reports every figure as a
number, loses and duplicates nothing. Timings are reported by the bench, never asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from itel_dagster.settings.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow  # runs the bench as a process (kafka: from its fixture)

WORKER_FIGURES = [
    ("in_process", "events_per_second"),
    ("catch_up", "events_per_second"),
    ("catch_up", "ratio_to_in_process"),
    ("latency", "p50_seconds"),
    ("latency", "p95_seconds"),
    ("latency", "max_seconds"),
    ("run_overhead", "median_seconds"),
]


def test_smoke_bench_reports_every_figure_and_loses_nothing(kafka_bootstrap, tmp_path):
    results = tmp_path / "results"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "ITEL_STATE_DIR": str(tmp_path / "var"), "ITEL_DELTA_ROOT": str(tmp_path / "delta")}
    finished = subprocess.run(
        [sys.executable, "-m", "itel_dagster.cli", "bench", "--smoke", "--no-progress",
         "--results-dir", str(results), "--work-dir", str(tmp_path / "work")],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)

    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert "correctness: PASSED" in finished.stdout
    (result_file,) = results.glob("bench-*-smoke.json")
    doc = json.loads(result_file.read_text())
    assert doc["passed"] is True and doc["error"] is None
    assert doc["options"]["events"] == 200
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["memory_gb"] > 0
    assert "commit" in doc["git"]
    figures = doc["figures"]
    for worker in ("tracking", "api"):
        for section, name in WORKER_FIGURES:
            value = figures[section][worker][name]
            assert isinstance(value, (int, float)) and value >= 0, (section, worker, name, value)
        assert figures["catch_up"][worker]["failed_runs"] == 0
        # How the cores were shared until the group got to lag 0 (CPU seconds by process kind).
        cpu = figures["catch_up"][worker]["cpu_seconds"]
        for kind in ("tracking_runs", "api_runs", "daemon", "code_server"):
            assert cpu[kind] > 0, (worker, kind, cpu)
        for kind in ("claimx_simulator", "itel_simulator", "bench"):  # followed, maybe idle
            assert cpu[kind] >= 0, (worker, kind, cpu)
        assert cpu["available"] == pytest.approx(
            figures["catch_up"][worker]["seconds"] * doc["machine"]["cores"], abs=0.2)
        assert figures["latency"][worker]["events"] > 0
    for name in ("largest_run_process", "daemon", "code_server", "fork_server"):
        assert figures["memory_mb"][name] > 0, name
    for worker in ("tracking", "api"):  # the largest run of each worker, found by its pid tag
        largest = figures["memory_mb"][f"largest_run_{worker}"]
        assert largest["mb"] > 0 and largest["records"] > 0, (worker, largest)
    # Run-like processes that no run's pid tag names, kept to find out what they are.
    tagged_peak = max(figures["memory_mb"][f"largest_run_{w}"]["mb"] for w in ("tracking", "api"))
    for process in figures["memory_mb"]["unattributed_run_processes"]:
        assert process["pid"] > 0 and process["mb"] > 0, process
    assert figures["memory_mb"]["largest_run_process"] == tagged_peak  # worker runs only
    assert isinstance(figures["memory_mb"]["other_runs"], list)
    assert figures["claimx"]["requests"] > 0
    assert isinstance(figures["claimx"]["bound_per_event"], float)
    checks = doc["correctness"]
    assert checks and all(check["passed"] for check in checks), checks
    # Both the in-process limit and the Dagster path were checked for loss and duplicates.
    assert any(c["name"].startswith("in-process:") for c in checks)
    assert any(c["name"].startswith("dagster:") for c in checks)
    assert len(doc["targets"]) == 8
