"""`itel-dagster stuck` and `itel-dagster skip` on the real broker: a record whose dead-letter run
keeps failing leaves its partition stuck; `stuck` names it with the error, `skip` dead-letters it
by hand and the partition flows again, every other record processed once."""

from __future__ import annotations

import json

import dagster as dg
import pytest
import yaml
from click.testing import CliRunner
from dagster._core.test_utils import create_run_for_test

from itel_dagster.cli import main
from itel_dagster.cli import recovery_commands
from itel_dagster.ops import shared_stage_ops, tracking_ops
from itel_dagster.sensors.run_range_tags import WORKER_TAG
from itel_dagster.settings.workers import WORKERS_FILE
from itel_dagster_tests.test_poison_isolation import _breaks_on, _records, produce_to_partition_0

TRACKING = "itel_cabinet_tracking_worker"


def test_stuck_names_the_record_and_skip_moves_the_partition_past_it(pipeline, monkeypatch):
    path = pipeline.root / "config" / WORKERS_FILE
    data = yaml.safe_load(path.read_text())
    data["workers"][TRACKING].update(redispatch_pause_seconds=0, max_dispatch_attempts=2)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    records = _records(20, seed=171)
    poison = records[7]
    monkeypatch.setattr(tracking_ops, "tracking_rows",
                        _breaks_on(poison.event_id, tracking_ops.tracking_rows))

    def dead_letter_broken(*args, **kwargs):
        raise RuntimeError("error topic unwritable")

    monkeypatch.setattr(shared_stage_ops, "poison_records", dead_letter_broken)
    monkeypatch.setattr(recovery_commands, "dagster_instance", lambda: pipeline.instance)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", pipeline.bootstrap)
    produce_to_partition_0(pipeline, records)
    runner = CliRunner()

    for _ in range(2):  # the whole range fails twice
        [request] = pipeline.tick(TRACKING).run_requests
        assert not pipeline.execute(TRACKING, request).success
    isolating = runner.invoke(main, ["stuck", "--worker", TRACKING])
    assert isolating.exit_code == 0, isolating.output
    assert "[0] ISOLATING at offset 0" in isolating.output
    assert "a bad record lies in 0-20" in isolating.output
    assert f"cannot build the row of {poison.event_id}" in isolating.output

    pipeline.drain(TRACKING)  # the search finds offset 7; its dead-letter run fails twice
    report = runner.invoke(main, ["stuck"])
    assert report.exit_code == 0, report.output
    assert "[0] STUCK at offset 7" in report.output
    assert "error topic unwritable" in report.output
    assert f"itel-dagster skip --worker {TRACKING} --partition 0 --offset 7" in report.output
    assert "itel_cabinet_api_worker: no partition stuck or isolating" in report.output
    assert pipeline.committed(TRACKING)[0] == 7

    wrong = runner.invoke(main, ["skip", "--worker", TRACKING, "--partition", "0",
                                 "--offset", "9"])
    assert wrong.exit_code != 0 and "is at offset 7" in wrong.output
    busy = create_run_for_test(pipeline.instance, job_name="itel_cabinet_tracking_job",
                               status=dg.DagsterRunStatus.STARTED,
                               tags={WORKER_TAG: TRACKING, "itel/kafka_partitions": "0"})
    refused = runner.invoke(main, ["skip", "--worker", TRACKING, "--partition", "0",
                                   "--offset", "7"])
    assert refused.exit_code != 0 and "in flight on partition 0" in refused.output
    pipeline.instance.delete_run(busy.run_id)

    skipped = runner.invoke(main, ["skip", "--worker", TRACKING, "--partition", "0",
                                   "--offset", "7", "--reason", "ticket OPS-12"])
    assert skipped.exit_code == 0, skipped.output
    assert f"(event {poison.event_id}) is on {pipeline.tracking.error_topic}" in skipped.output
    [dead] = [json.loads(m.value()) for m in pipeline.consume_all(pipeline.tracking.error_topic)]
    assert (dead["event_id"], dead["stage"], dead["error_type"], dead["kafka_offset"]) == \
        (poison.event_id, "poison", "skipped_by_operator", 7)
    assert dead["error_message"] == "skipped by operator: ticket OPS-12"

    pipeline.drain(TRACKING)
    assert pipeline.lag(TRACKING) == 0
    assert sorted(pipeline.tracking_table()["event_id"].to_list()) == \
        sorted(r.event_id for r in records if r is not poison)
    assert "no partition stuck" in runner.invoke(main, ["stuck", "--worker", TRACKING]).output


@pytest.mark.parametrize("command", [["stuck", "--help"], ["skip", "--help"]])
def test_recovery_commands_explain_themselves(command):
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 0 and "Usage: main " in result.output
