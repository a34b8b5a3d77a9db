"""Sensor evaluations share one instance per instance ref, reading the same storage the daemon
writes, instead of building one per tick."""

from __future__ import annotations

import dagster as dg
import pytest

from itel_dagster.sensors.sensor_instance import sensor_instance

pytestmark = pytest.mark.slow  # builds Dagster instances from refs, storages and all


@dg.op
def noop():
    pass


@dg.job
def small_job():
    noop()


def evaluation(ref) -> dg.SensorEvaluationContext:
    """A context as the code server builds it for a daemon's tick: with the ref, no instance."""
    return dg.SensorEvaluationContext(instance_ref=ref, sensor_name="s", repository_name="r")


def test_evaluations_of_one_ref_share_an_instance_that_sees_new_runs():
    with dg.instance_for_test() as daemon_side:
        ref = daemon_side.get_ref()
        first = sensor_instance(evaluation(ref))
        assert sensor_instance(evaluation(ref)) is first
        assert first is not daemon_side
        assert first.get_runs() == []
        result = small_job.execute_in_process(instance=daemon_side)
        assert [r.run_id for r in first.get_runs()] == [result.run_id]  # no stale cache


def test_another_ref_gets_its_own_instance_and_a_built_context_keeps_its_own():
    with dg.instance_for_test() as one, dg.instance_for_test() as other:
        assert sensor_instance(evaluation(one.get_ref())) is not \
            sensor_instance(evaluation(other.get_ref()))
        assert sensor_instance(dg.build_sensor_context(instance=one)) is one
