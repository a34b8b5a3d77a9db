"""The stock-Dagster leg: both workers end to end through a real `dagster-daemon run` whose
instance is the project's dagster.yaml without its run_launcher, event_log_storage and
compute_logs blocks (Dagster's defaults instead; run coordinator, monitoring and retries kept).
It shows those three blocks are optional: nothing lost or doubled without them.
"""

from __future__ import annotations

import dagster as dg
import pytest
import yaml

from itel_dagster_bench.crash_stack import CrashStack
from itel_dagster_bench.stock_vs_own import (
    OPTIONAL_BLOCKS,
    PROJECT_DAGSTER_YAML,
    write_stock_dagster_yaml,
)
from itel_dagster_bench.seed_workers import API_WORKER, TRACKING_WORKER

EVENTS = 100  # 5% of them invalid


def test_the_stock_yaml_is_dagster_yaml_without_the_three_optional_blocks(tmp_path):
    project = yaml.safe_load(PROJECT_DAGSTER_YAML.read_text())
    stock = yaml.safe_load(write_stock_dagster_yaml(tmp_path).read_text())

    assert all(key in project for key in OPTIONAL_BLOCKS)
    assert stock == {k: v for k, v in project.items() if k not in OPTIONAL_BLOCKS}
    assert {"run_coordinator", "run_monitoring", "run_retries"} <= stock.keys()


@pytest.mark.slow  # a broker, both simulators, a code server and the daemon
def test_both_workers_drain_through_dagsters_default_launcher_storage_and_compute_logs(
        tmp_path_factory):
    stock_yaml = write_stock_dagster_yaml(tmp_path_factory.mktemp("stock-yaml"))
    with CrashStack(tmp_path_factory.mktemp("stock-dagster"), dagster_yaml=stock_yaml) as stack:
        batch = stack.publish(EVENTS, bad_fraction=0.05)
        stack.wait_drained(batch)

        found = stack.check(batch)
        instance = stack.daemon.instance()
        runs = stack.runs()

    assert found.events == EVENTS and len(batch.valid_ids) < EVENTS
    assert found.failures(max_re_posts=0) == [], found
    # The daemon's instance is Dagster's own in the three places, and its runs show it: our
    # launcher tags each run with its process id, the default launcher does not.
    assert isinstance(instance.run_launcher, dg.DefaultRunLauncher)
    assert type(instance.event_log_storage).__module__.startswith("dagster.")
    assert type(instance.compute_log_manager).__module__.startswith("dagster.")
    for worker in (TRACKING_WORKER, API_WORKER):
        assert any(r.worker == worker and r.status == "SUCCESS" for r in runs), worker
    assert [r.run_id for r in runs if r.pid is not None] == []
