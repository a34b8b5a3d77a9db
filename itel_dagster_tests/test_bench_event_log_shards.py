"""`python -m itel_dagster_bench.event_log_shards`: every figure is measured and printed; timings
are reported, never asserted."""

import subprocess
import sys

import pytest

from itel_dagster.settings.paths import PROJECT_ROOT

from itel_dagster_bench.event_log_shards import measure

FIGURES = {"pooled_new_ms", "pooled_existing_ms", "dagster_init_new_ms", "dagster_init_existing_ms"}


def test_it_measures_both_storages_for_new_and_opened_run_databases():
    figures = measure(runs=3)
    assert set(figures) == FIGURES
    assert all(isinstance(value, float) and value >= 0 for value in figures.values()), figures
    assert figures["dagster_init_new_ms"] > 0  # Dagster's init does work for a new database


@pytest.mark.slow  # a Python process of its own
def test_the_command_prints_each_figure():
    finished = subprocess.run([sys.executable, "-m", "itel_dagster_bench.event_log_shards",
                               "--runs", "2"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert {line.split(":")[0] for line in finished.stdout.splitlines()} == FIGURES
