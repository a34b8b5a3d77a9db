"""The code location loads with no service running and no connection variables set."""

from __future__ import annotations

import importlib
import subprocess
import sys

import dagster as dg

from itel_dagster.settings.paths import PROJECT_ROOT


def test_definitions_load_without_services(monkeypatch):
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "CLAIMX_API_BASE_URL", "CLAIMX_API_TOKEN",
                 "ITEL_CABINET_API_BASE_URL", "ITEL_CABINET_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    module = importlib.reload(importlib.import_module("itel_dagster.definitions"))
    assert isinstance(module.defs, dg.Definitions)
    module.defs.get_repository_def().load_all_definitions()


def test_workspace_loads_with_dagster_cli(tmp_path):
    """`dagster definitions validate` is what `dagster dev` does first with workspace.yaml."""
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT,
        env={"PATH": "/usr/bin:/bin", "DAGSTER_HOME": str(tmp_path), "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
