"""The example instance configurations under deploy/ load with Dagster's own schema and keep the
lane limit of the repo's dagster.yaml, so the scaling guide never drifts from the local stack."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config
from dagster._core.run_coordinator import QueuedRunCoordinator

from itel_dagster.sensors.run_range_tags import LANE_TAG
from itel_dagster.settings.kafka import default_partitions
from itel_dagster.settings.workers import load_workers
from itel_dagster.settings.paths import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"
EXAMPLES = ["dagster.queued.yaml", "dagster.k8s.yaml", "dagster.postgres.yaml"]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def tag_limits(config: dict) -> list[dict]:
    coordinator = config["run_coordinator"]
    assert coordinator["class"] == "QueuedRunCoordinator"
    return coordinator["config"]["tag_concurrency_limits"]


@pytest.mark.parametrize("name", [*EXAMPLES, "../dagster.yaml"])
def test_instance_config_is_valid_for_dagster(name):
    directory, file_name = (DEPLOY / name).resolve().parent, Path(name).name
    config, _ = dagster_instance_config(str(directory), file_name)  # raises on a schema error
    coordinator = load(directory / file_name)["run_coordinator"]["config"]
    assert validate_config(QueuedRunCoordinator.config_type(), coordinator).success
    assert config["run_retries"]["enabled"] is True


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_keep_the_lane_limit_of_the_local_stack(name):
    local = tag_limits(load(PROJECT_ROOT / "dagster.yaml"))
    example = tag_limits(load(DEPLOY / name))
    lane = {"key": LANE_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    assert lane in local
    for limit in local:  # every limit of the local stack, unchanged
        assert limit in example


def test_local_stack_can_run_every_lane_at_once_and_a_backfill(monkeypatch):
    monkeypatch.delenv("ITEL_CONFIG_DIR", raising=False)  # the repo's workers.yaml
    monkeypatch.delenv("ITEL_KAFKA_PARTITIONS", raising=False)  # the stack's default partitions
    workers = load_workers().values()
    assert all(1 <= w.lanes <= default_partitions() for w in workers)
    coordinator = load(PROJECT_ROOT / "dagster.yaml")["run_coordinator"]["config"]
    assert coordinator["max_concurrent_runs"] >= sum(w.lanes for w in workers) + 1


def test_kubernetes_example_launches_pods_on_postgres():
    config = load(DEPLOY / "dagster.k8s.yaml")
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    assert launcher["config"]["instance_config_map"]  # required by K8sRunLauncher
    state_mount = {m["name"]: m["mount_path"] for m in launcher["config"]["volume_mounts"]}
    assert set(state_mount) == {v["name"] for v in launcher["config"]["volumes"]}
    postgres = config["storage"]["postgres"]["postgres_db"]
    assert postgres["password"] == {"env": "DAGSTER_PG_PASSWORD"}  # never a literal secret
    assert config["run_monitoring"]["enabled"] is True
    # Run pods share one breaker, cache and metrics: the state lives in Postgres, not on the pod.
    state_urls = [v for v in launcher["config"]["env_vars"] if v.startswith("ITEL_STATE_URL=")]
    assert len(state_urls) == 1 and state_urls[0].split("=", 1)[1].startswith("postgresql://")


def test_postgres_example_takes_every_connection_setting_from_the_environment():
    config = load(DEPLOY / "dagster.postgres.yaml")
    postgres = config["storage"]["postgres"]["postgres_db"]
    names = {key: value["env"] for key, value in postgres.items() if isinstance(value, dict)}
    assert names == {"hostname": "DAGSTER_PG_HOST", "port": "DAGSTER_PG_PORT",
                     "username": "DAGSTER_PG_USER", "password": "DAGSTER_PG_PASSWORD",
                     "db_name": "DAGSTER_PG_DB"}
    assert "event_log_storage" not in config  # ours is SQLite only (docs/architecture.md)


def test_scaling_guide_points_at_files_that_exist():
    guide = (PROJECT_ROOT / "docs/scaling.md").read_text()
    for name in EXAMPLES:
        assert f"deploy/{name}" in guide and (DEPLOY / name).exists()
