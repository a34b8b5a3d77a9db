"""Dagster's private modules are used only through itel_dagster/dagster_seam.py (and the
launchers/ and storage/ packages), and only with the Dagster series the seam was written for."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

import dagster as dg

from itel_dagster import dagster_seam
from itel_dagster.settings.paths import PROJECT_ROOT

PRIVATE = re.compile(r"\bdagster\._")


def seam_files(root: Path) -> list[Path]:
    package = root / "itel_dagster"
    return [package / "dagster_seam.py", package / "launchers", package / "storage"]


def checked_files(root: Path) -> list[Path]:
    package = root / "itel_dagster"
    return [*package.rglob("*.py"), *package.rglob("*.yaml"),
            *root.glob("dagster.yaml"), *(root / "deploy").glob("*.yaml")]


def private_uses(root: Path) -> list[str]:
    """file:line of each private Dagster name under root, outside the seam's files."""
    seam = seam_files(root)
    return [f"{path.relative_to(root)}:{number}: {line.strip()}"
            for path in checked_files(root)
            if not any(path == s or s in path.parents for s in seam)
            for number, line in enumerate(path.read_text().splitlines(), 1)
            if PRIVATE.search(line)]


def test_installed_dagster_is_the_series_the_seam_was_written_for():
    problem = dagster_seam.dagster_version_problem()
    assert problem is None, problem


def test_the_dagster_pin_is_the_seams_series():
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["dependencies"] if re.match(r"dagster\s*[<>=]", d)]
    major, minor = dagster_seam.DAGSTER_SERIES.split(".")
    expected = f"dagster>={major}.{minor},<{major}.{int(minor) + 1}"
    assert pins == [expected], (
        f"pyproject.toml pins {pins}, but dagster_seam.DAGSTER_SERIES is "
        f"{dagster_seam.DAGSTER_SERIES}: port the seam (dagster_seam.py, launchers/, storage/) "
        f"to the new series before moving the pin, and change both together")


def test_another_dagster_series_is_refused_with_what_to_do():
    assert dagster_seam.dagster_version_problem(f"{dagster_seam.DAGSTER_SERIES}.99") is None
    problem = dagster_seam.dagster_version_problem("1.14.0")
    assert problem is not None
    assert "Dagster 1.14.0 is installed" in problem
    assert f"written for Dagster {dagster_seam.DAGSTER_SERIES}.x" in problem
    assert "DAGSTER_SERIES and the dagster pin" in problem


def test_no_module_outside_the_seam_uses_private_dagster():
    found = private_uses(PROJECT_ROOT)
    assert not found, ("private Dagster names outside itel_dagster/dagster_seam.py (and "
                       "launchers/, storage/); take them from the seam instead:\n"
                       + "\n".join(found))


def test_the_check_finds_a_private_name_outside_the_seam_only(tmp_path):
    private = "from dagster._core.storage.tags import WILL_RETRY_TAG\n"
    for name in ["dagster_seam.py", "launchers/run_fork_server.py", "storage/event_log.py",
                 "sensors/stray.py"]:
        (tmp_path / "itel_dagster" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "itel_dagster" / name).write_text(private)
    (tmp_path / "dagster.yaml").write_text("compute_logs:\n  module: dagster._core.storage.x\n")
    assert private_uses(tmp_path) == [
        "itel_dagster/sensors/stray.py:1: " + private.strip(),
        "dagster.yaml:2: module: dagster._core.storage.x",
    ]


def test_the_run_worker_modules_to_preload_exist():
    missing = [name for name in dagster_seam.RUN_WORKER_DAGSTER_MODULES
               if importlib.util.find_spec(name) is None]
    assert not missing, f"Dagster no longer has {missing}: update RUN_WORKER_DAGSTER_MODULES"


def test_the_repos_instance_captures_no_compute_logs_through_the_seam(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    (tmp_path / "dagster.yaml").write_text((PROJECT_ROOT / "dagster.yaml").read_text())
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:
        assert isinstance(instance.compute_log_manager, dagster_seam.NoOpComputeLogManager)
        assert instance.compute_log_manager.inst_data.module_name == "itel_dagster.dagster_seam"
    finally:
        instance.dispose()
