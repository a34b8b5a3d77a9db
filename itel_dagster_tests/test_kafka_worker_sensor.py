"""The worker sensor's reads: run states before committed offsets, so a run that commits and
finishes while a tick is evaluated is never dispatched again."""

from __future__ import annotations

from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.sensors import kafka_worker_sensor

TRACKING = "itel_cabinet_tracking_worker"


def test_a_run_that_finishes_during_a_tick_is_not_dispatched_again(pipeline, monkeypatch):
    pipeline.produce(generate_records(count=40, seed=81, days=0.1))
    pending = list(pipeline.tick(TRACKING).run_requests)
    assert pending
    read_states = kafka_worker_sensor.partitions_in_flight

    def runs_finish_while_the_tick_reads(instance, worker):
        # The queued runs commit their offsets and succeed between the tick's first offset read
        # and its read of the run states: the moment the daemon's race happens.
        while pending:
            assert pipeline.execute(TRACKING, pending.pop()).success
        return read_states(instance, worker)

    monkeypatch.setattr(kafka_worker_sensor, "partitions_in_flight",
                        runs_finish_while_the_tick_reads)
    result = pipeline.tick(TRACKING)
    assert pipeline.lag(TRACKING) == 0
    assert list(result.run_requests) == []
    assert "lag 0" in result.skip_reason
