"""The bench's figures from a worker's run records: the time between one run's end and the next
run's start, split at the sensor's request."""

from itel_dagster_bench.dagster_path import RunFacts, between_runs


def _run(created: float, started: float | None, ended: float | None) -> RunFacts:
    return RunFacts(run_id=f"run-{created}", worker="w", ranges=(), status="SUCCESS",
                    created_at=created, started_at=started, ended_at=ended)


def test_medians_between_consecutive_runs():
    runs = [
        _run(20.0, 22.5, 30.0),  # listed out of order: runs are taken by request time
        _run(0.0, 2.0, 10.0),
        _run(11.0, 12.0, 19.0),
        _run(33.0, 34.0, 40.0),
        _run(41.0, None, None),  # still queued: not counted
    ]

    gaps = between_runs(runs)

    # end -> next request: 1.0, 1.0, 3.0; request -> start: 1.0, 2.5, 1.0
    assert gaps == {"end_to_next_request_median_seconds": 1.0,
                    "request_to_start_median_seconds": 1.0}


def test_one_run_has_no_gaps():
    assert between_runs([_run(0.0, 1.0, 2.0)]) == {
        "end_to_next_request_median_seconds": None, "request_to_start_median_seconds": None}
