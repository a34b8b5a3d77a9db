"""Per-worker retry policies: run-retry tags from workers.yaml, op RetryPolicies, and the rule that
keeps them from multiplying (a run that failed in an op is not retried by Dagster)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import yaml

from itel_dagster.dagster_seam import WILL_RETRY_TAG
from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.settings.paths import PROJECT_ROOT
from itel_dagster_tests.fixtures.pipeline_fixtures import code_location

TRACKING = "itel_cabinet_tracking_worker"
API = "itel_cabinet_api_worker"


def test_dagster_yaml_enables_run_retries():
    instance_yaml = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    assert instance_yaml["run_retries"]["enabled"] is True


def test_each_workers_runs_carry_its_own_retry_tags_from_workers_yaml(pipeline):
    pipeline.produce(generate_records(count=30, seed=71, days=0.1))
    tags = {worker: pipeline.tick(worker).run_requests[0].tags for worker in (TRACKING, API)}
    for worker, policy in ((TRACKING, pipeline.tracking.retry_policy),
                           (API, pipeline.api.retry_policy)):
        assert tags[worker]["dagster/max_retries"] == str(policy.run_max_retries)
        assert tags[worker]["dagster/retry_strategy"] == policy.run_retry_strategy
        assert tags[worker]["dagster/retry_on_asset_or_op_failure"] == "false"
    # The primary (API) worker retries more than the best-effort tracking worker.
    assert int(tags[API]["dagster/max_retries"]) > int(tags[TRACKING]["dagster/max_retries"])

    # Changing workers.yaml changes the next runs' tags.
    workers_file = Path(pipeline.root) / "config/plugins/itel_cabinet_api/workers.yaml"
    data = yaml.safe_load(workers_file.read_text())
    data["workers"][TRACKING]["retry_policy"].update(run_max_retries=2,
                                                     run_retry_strategy="FROM_FAILURE")
    workers_file.write_text(yaml.safe_dump(data, sort_keys=False))
    [request] = pipeline.tick(TRACKING).run_requests[:1]
    assert request.tags["dagster/max_retries"] == "2"
    assert request.tags["dagster/retry_strategy"] == "FROM_FAILURE"


def _node_retries(settings, node: str):
    from itel_dagster_tests.fixtures.pipeline_fixtures import worker_definitions

    job = worker_definitions(settings).resolve_job_def(settings.job)
    return job.graph.node_named(settings.asset).definition.node_named(node).retry_policy


def test_the_final_stage_ops_retry_as_each_workers_yaml_entry_says(pipeline):
    for settings, node in ((pipeline.tracking, "write_tracking_rows"),
                           (pipeline.api, "skip_already_sent")):
        policy = _node_retries(settings, node)
        assert policy.max_retries == settings.retry_policy.op_max_retries
        assert policy.delay == settings.retry_policy.op_delay_seconds
        assert policy.backoff == dg.Backoff.EXPONENTIAL and policy.jitter is not None
    # A rerun of the whole send op would send recorded rounds again: never retried as a whole.
    assert _node_retries(pipeline.api, "send_to_itel") is None

    # An edited workers.yaml gives the worker's next build its retries.
    workers_file = Path(pipeline.root) / "config/plugins/itel_cabinet_api/workers.yaml"
    data = yaml.safe_load(workers_file.read_text())
    data["workers"][TRACKING]["retry_policy"]["op_max_retries"] = 5
    workers_file.write_text(yaml.safe_dump(data, sort_keys=False))
    assert _node_retries(pipeline.tracking, "write_tracking_rows").max_retries == 5


def test_a_run_that_failed_in_an_op_is_not_retried_by_dagster_so_retries_do_not_multiply(
        pipeline, monkeypatch, tmp_path):
    pipeline.produce(generate_records(count=10, seed=72, days=0.1))
    [request] = pipeline.tick(TRACKING).run_requests[:1]
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the Delta root should be")
    monkeypatch.setenv("ITEL_DELTA_ROOT", str(blocker / "delta"))
    defs = code_location()  # the code location as loaded with that root
    job = defs.resolve_job_def("itel_cabinet_tracking_job")
    # An instance configured like dagster.yaml: run retries on.
    with dg.instance_for_test(overrides={"run_retries": {"enabled": True}}) as instance:
        as_dispatched = job.execute_in_process(
            run_config=request.run_config, partition_key=request.partition_key,
            tags=request.tags, instance=instance, raise_on_error=False)
        assert not as_dispatched.success
        run = instance.get_run_by_id(as_dispatched.run_id)
        # The op's RetryPolicy ran its attempts; Dagster will not retry the whole run on top.
        attempts = [e for e in as_dispatched.all_events
                    if e.event_type_value == "STEP_UP_FOR_RETRY"
                    and e.step_key.endswith("write_tracking_rows")]
        assert len(attempts) == pipeline.tracking.retry_policy.op_max_retries
        assert run.tags[WILL_RETRY_TAG] == "false"

        # Without our tag the same failure would be retried as a whole run: the tag matters.
        retried_tags = {**request.tags, "dagster/retry_on_asset_or_op_failure": "true"}
        multiplied = job.execute_in_process(
            run_config=request.run_config, partition_key=request.partition_key,
            tags=retried_tags, instance=instance, raise_on_error=False)
        assert instance.get_run_by_id(multiplied.run_id).tags[WILL_RETRY_TAG] == "true"
