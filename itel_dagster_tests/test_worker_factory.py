"""The worker factory: every worker's asset, live job, sensor and checks come from its
workers.yaml entry; `stages` shapes its graph; no worker name is written in the package."""

from __future__ import annotations

import copy
import re

import dagster as dg
import pytest
import yaml

# The code location is imported here, with the repository's workers.yaml: importing it first
# inside a test below would build its definitions from that test's edited file.
from itel_dagster.definitions import RESOURCES
from itel_dagster_bench.seed_workers import API_WORKER, TRACKING_WORKER
from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.settings.env_yaml import ConfigError
from itel_dagster.settings.paths import PROJECT_ROOT, config_dir
from itel_dagster.settings.workers import WORKERS_FILE, load_workers
from itel_dagster.worker_factory import build_workers

SEED_WORKERS = PROJECT_ROOT / "config" / WORKERS_FILE


def _write_workers(tmp_path, monkeypatch, change) -> None:
    """A copy of the seed's config/ whose workers.yaml `change(data)` edited."""
    import shutil

    shutil.copytree(PROJECT_ROOT / "config", tmp_path / "config")
    data = yaml.safe_load(SEED_WORKERS.read_text())
    change(data["workers"])
    (tmp_path / "config" / WORKERS_FILE).write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("ITEL_CONFIG_DIR", str(tmp_path / "config"))


def _third_worker(workers: dict) -> None:
    """A second Delta-writing worker, without ClaimX enrichment, on a table of its own."""
    audit = copy.deepcopy(workers[TRACKING_WORKER])
    audit.update(name="audit_worker", consumer_group="audit_worker_group", asset="audit_events",
                 asset_group="audit_worker", job="audit_job", delta_table="audit_events",
                 stages=["transform", "validate", "delta_write"],
                 success_topic="audit.success", error_topic="audit.errors")
    workers["audit_worker"] = audit


def test_a_worker_added_in_workers_yaml_gets_its_asset_job_sensor_and_checks(tmp_path,
                                                                             monkeypatch):
    _write_workers(tmp_path, monkeypatch, _third_worker)
    workers = build_workers(load_workers())
    assert [w.settings.name for w in workers] == [TRACKING_WORKER, API_WORKER,
                                                  "itel_cabinet_trigger", "audit_worker"]
    audit = workers[-1]
    defs = dg.Definitions(
        assets=[w.asset for w in workers], jobs=[w.job for w in workers],
        sensors=[w.sensor for w in workers], asset_checks=[c for w in workers for c in w.checks],
        resources=RESOURCES)
    repository = defs.get_repository_def()
    repository.load_all_definitions()
    assert audit.sensor.name == "audit_sensor" and audit.sensor.job_name == "audit_job"
    graph = defs.resolve_job_def("audit_job").graph.node_named("audit_events").definition
    nodes = {node.name for node in graph.nodes}
    # stages without claimx_lookup: no lookup op, the skip op in its place.
    assert "claimx_lookup" not in nodes and "skip_claimx_lookup" in nodes
    assert {"write_tracking_rows", "publish_results_and_commit"} <= nodes
    assert {spec.name for check in audit.checks for spec in check.check_specs} == {
        "event_id_unique_per_day", "complete_per_day", "freshness",
        "no_records_lost_to_retention"}
    assert {spec.asset_key.to_user_string() for check in audit.checks
            for spec in check.check_specs} == {"audit_events"}
    api_graph = defs.resolve_job_def(workers[1].settings.job).graph.node_named(
        workers[1].settings.asset).definition
    assert {"skip_already_sent", "send_to_itel", "claimx_lookup"} <= {n.name for n in api_graph.nodes}
    trigger = workers[2].settings
    trigger_graph = defs.resolve_job_def(trigger.job).graph.node_named(trigger.asset).definition
    assert {n.name for n in trigger_graph.nodes} == {
        "read_kafka_range", "transform_events", "select_task_events", "skip_already_forwarded",
        "record_forwarded", "publish_results_and_commit"}  # no ClaimX op of any kind


@pytest.mark.parametrize("change, message", [
    (lambda w: w[TRACKING_WORKER].update(stages=["validate", "transform", "delta_write"]),
     "transform, validate and optionally claimx_lookup"),
    (lambda w: w[TRACKING_WORKER].update(stages=["transform", "validate", "claimx_lookup"]),
     "must end with one final stage"),
    (lambda w: w["itel_cabinet_trigger"].update(stages=["transform", "validate", "kafka_publish"]),
     "stages before kafka_publish must be transform and select_task_events"),
    (lambda w: w[API_WORKER].update(asset=w[TRACKING_WORKER]["asset"]), "share asset"),
    (lambda w: w[API_WORKER].update(job=w[TRACKING_WORKER]["job"]), "share job"),
    (lambda w: w[API_WORKER].update(name="other"), "must match"),
])
def test_a_worker_entry_that_cannot_be_built_fails_the_load_with_the_reason(
        tmp_path, monkeypatch, change, message):
    _write_workers(tmp_path, monkeypatch, change)
    with pytest.raises(ConfigError, match=message):
        load_workers()


def test_settings_are_read_once_and_again_after_the_file_changes(tmp_path, monkeypatch):
    _write_workers(tmp_path, monkeypatch, lambda w: None)
    first = load_workers()
    assert load_workers() is first  # one read per process while the file is unchanged
    path = config_dir() / WORKERS_FILE
    data = yaml.safe_load(path.read_text())
    data["workers"][TRACKING_WORKER]["lanes"] = 3
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert load_workers()[TRACKING_WORKER].lanes == 3


def test_no_worker_asset_or_job_name_is_written_in_the_package():
    names = set()
    for worker in yaml.safe_load(SEED_WORKERS.read_text())["workers"].values():
        names |= {worker["name"], worker["asset"], worker["job"], worker["consumer_group"]}
    quoted = re.compile("|".join(rf"[\"']{re.escape(name)}[\"']" for name in names))
    package = PROJECT_ROOT / "itel_dagster"
    # (The benchmarks, a package of their own, drive the seed's workers by name.)
    found = [f"{path.relative_to(PROJECT_ROOT)}:{number}"
             for path in package.rglob("*.py")
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if quoted.search(line)]
    assert not found, f"worker names written in code: {found}"


def test_a_worker_without_claimx_lookup_never_asks_claimx(pipeline, claimx_simulator):
    path = pipeline.root / "config" / WORKERS_FILE
    data = yaml.safe_load(path.read_text())
    data["workers"][TRACKING_WORKER]["stages"] = ["transform", "validate", "delta_write"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    records = list(generate_records(count=40, seed=91, days=0.1))
    pipeline.produce(records)
    claimx_simulator.clear_stats()
    results = pipeline.drain(TRACKING_WORKER)
    assert results and all(r.success for r in results)
    table = pipeline.tracking_table()
    assert table.height > 0
    assert table["enrichment_status"].unique().to_list() == ["not_requested"]
    assert table["claimx_task_full"].null_count() == table.height
    assert claimx_simulator.stats()["routes"].get("GET /api/v1/tasks/{assignment_id}",
                                                  {"total": 0})["total"] == 0
    assert pipeline.lag(TRACKING_WORKER) == 0


def _fetches(results) -> int:
    return sum(event.materialization.metadata["kafka_fetches"].value
               for result in results for event in result.get_asset_materialization_events())


def test_batch_size_is_the_records_of_one_kafka_fetch(pipeline):
    path = pipeline.root / "config" / WORKERS_FILE
    records = list(generate_records(count=60, seed=92, days=0.1))
    pipeline.produce(records)
    data = yaml.safe_load(path.read_text())
    data["workers"][TRACKING_WORKER]["batch_size"] = 4
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    small = pipeline.drain(TRACKING_WORKER)
    data["workers"][API_WORKER]["batch_size"] = 10_000
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    large = pipeline.drain(API_WORKER)
    # 60 records over 3 partitions: at least 60 / 4 fetches of 4, against one per partition.
    assert _fetches(small) >= 15
    assert _fetches(large) <= 6
    assert pipeline.lag(TRACKING_WORKER) == pipeline.lag(API_WORKER) == 0


def test_an_edited_workers_yaml_reaches_the_sensor_and_its_runs_together_on_reload(pipeline):
    pipeline.produce(list(generate_records(count=20, seed=93, days=0.1)))
    loaded = pipeline.sensor(TRACKING_WORKER)  # the sensor as the code location loaded it
    path = pipeline.root / "config" / WORKERS_FILE
    data = yaml.safe_load(path.read_text())
    data["workers"][TRACKING_WORKER]["max_records_per_run"] = 5_000
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pipeline.sensor_context() as context:
        result = loaded(context)
    # Runs read the file as they start: the stale sensor dispatches none.
    assert not result.run_requests
    assert "reload the code location" in result.skip_reason.skip_message
    reloaded = pipeline.sensor(TRACKING_WORKER)  # a reload builds it from the edited file
    with pipeline.sensor_context() as context:
        assert reloaded(context).run_requests
