"""The code location loads with no service running and no connection variables set."""

from __future__ import annotations

import importlib
import subprocess
import sys

import dagster as dg
import pytest

from itel_dagster.settings.paths import PROJECT_ROOT
from itel_dagster_bench.seed_workers import TRACKING_WORKER
from itel_dagster.settings.workers import load_workers


def test_definitions_load_without_services(monkeypatch):
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "CLAIMX_API_BASE_URL", "CLAIMX_API_TOKEN",
                 "ITEL_CABINET_API_BASE_URL", "ITEL_CABINET_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    module = importlib.reload(importlib.import_module("itel_dagster.definitions"))
    assert isinstance(module.defs, dg.Definitions)
    repository = module.defs.get_repository_def()
    repository.load_all_definitions()
    sensor = repository.get_sensor_def("itel_cabinet_tracking_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    # workers.yaml's interval (4 s: every loop of dagster-daemon, which loops every 5 s)
    interval = load_workers()[TRACKING_WORKER].sensor_interval_seconds
    assert sensor.minimum_interval_seconds == interval == 4
    assert sensor.job_name == "itel_cabinet_tracking_job"
    job = module.defs.resolve_job_def("itel_cabinet_tracking_job")
    assert job.partitions_def.end_offset == 1  # today's partition exists
    api = repository.get_sensor_def("itel_cabinet_api_sensor")
    assert api.default_status == dg.DefaultSensorStatus.RUNNING
    assert api.job_name == "itel_cabinet_api_job"
    keys = {key.to_user_string() for key in repository.asset_graph.get_all_asset_keys()}
    assert {"itel_cabinet_task_tracking", "itel_api_sends"} <= keys



@pytest.mark.filterwarnings("error::DeprecationWarning")
def test_the_workers_jobs_use_no_deprecated_dagster_api():
    for name in ("itel_dagster.assets.worker_asset", "itel_dagster.worker_factory",
                 "itel_dagster.definitions"):
        importlib.reload(importlib.import_module(name))


@pytest.mark.slow
def test_workspace_loads_with_dagster_cli(tmp_path):
    """`dagster definitions validate` is what `dagster dev` does first with workspace.yaml."""
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT,
        env={"PATH": "/usr/bin:/bin", "DAGSTER_HOME": str(tmp_path), "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_the_runtime_never_imports_the_benchmarks(tmp_path):
    """The code location, every module the runs import and the itel-dagster command (all its
    subcommands registered) load without the benchmark package, which only `bench` and `chaos`
    import when they run."""
    code = ("import sys, itel_dagster.definitions, itel_dagster.cli; "
            "print(sorted(m for m in sys.modules if m.startswith('itel_dagster_bench')))")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        cwd=PROJECT_ROOT, env={"PATH": "/usr/bin:/bin", "DAGSTER_HOME": str(tmp_path),
                               "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
