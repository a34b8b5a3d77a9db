"""The metrics store: increments from separate OS processes add up in one SQLite file, histograms
render cumulative, and a store that cannot be written is logged and ignored."""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from itel_dagster.metrics.exporter import pipeline_registry, render
from itel_dagster.metrics.names import API_CALLS, API_LATENCY, TRACKING_DELTA_WRITES
from itel_dagster.metrics.recording import MetricBatch
from itel_dagster.metrics.store import MetricsStore

PROCESSES = 4
FLUSHES = 60


def samples(store: MetricsStore) -> dict[tuple[str, frozenset], float]:
    text = render(pipeline_registry(store))
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _record_in_a_process(path: str, start) -> None:
    store = MetricsStore(Path(path))
    start.wait()  # every process writes at the same time
    for _ in range(FLUSHES):
        batch = MetricBatch(store)
        batch.inc(TRACKING_DELTA_WRITES, 3)
        batch.inc(API_CALLS, status_class="2xx")
        batch.observe(API_LATENCY, 0.02)
        assert batch.flush()


@pytest.mark.slow
def test_increments_from_several_processes_add_up(tmp_path):
    path = tmp_path / "state" / "metrics.sqlite"
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PROCESSES)
    processes = [context.Process(target=_record_in_a_process, args=(str(path), start))
                 for _ in range(PROCESSES)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    assert [p.exitcode for p in processes] == [0] * PROCESSES

    values = samples(MetricsStore(path))
    assert values[("itel_tracking_worker_delta_writes_total", frozenset())] == \
        3 * PROCESSES * FLUSHES
    assert values[("itel_api_worker_api_calls_total", frozenset({("status_class", "2xx")}))] == \
        PROCESSES * FLUSHES
    assert values[("itel_api_worker_api_latency_seconds_count", frozenset())] == \
        PROCESSES * FLUSHES
    assert abs(values[("itel_api_worker_api_latency_seconds_sum", frozenset())]
               - 0.02 * PROCESSES * FLUSHES) < 1e-6


def test_histogram_buckets_render_cumulative(tmp_path):
    store = MetricsStore(tmp_path / "metrics.sqlite")
    batch = MetricBatch(store)
    for seconds in (0.001, 0.03, 0.04, 0.05, 100.0):
        batch.observe(API_LATENCY, seconds)
    assert batch.flush()
    values = samples(store)

    def bucket(le: str) -> float:
        return values[("itel_api_worker_api_latency_seconds_bucket", frozenset({("le", le)}))]

    assert bucket("0.005") == 1
    assert bucket("0.025") == 1
    assert bucket("0.05") == 4  # le is inclusive
    assert bucket("30.0") == 4
    assert bucket("+Inf") == 5
    assert values[("itel_api_worker_api_latency_seconds_count", frozenset())] == 5


def test_every_series_is_served_as_zero_before_anything_is_recorded(tmp_path):
    values = samples(MetricsStore(tmp_path / "never-written.sqlite"))
    assert values[("itel_tracking_worker_messages_processed_total",
                   frozenset({("outcome", "succeeded")}))] == 0
    assert values[("itel_tracking_worker_delta_write_errors_total", frozenset())] == 0
    assert values[("itel_api_worker_api_errors_total",
                   frozenset({("status_class", "5xx")}))] == 0
    assert values[("itel_api_worker_api_latency_seconds_count", frozenset())] == 0
    assert not (tmp_path / "never-written.sqlite").exists()  # reading creates nothing


def test_a_store_that_cannot_be_written_is_logged_and_ignored(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("a regular file where the state directory should be")
    store = MetricsStore(blocker / "metrics.sqlite")
    batch = MetricBatch(store)
    batch.inc(TRACKING_DELTA_WRITES, 5)
    with caplog.at_level(logging.WARNING):
        assert batch.flush() is False
    assert "metrics not recorded" in caplog.text and "a-file" in caplog.text


def test_a_store_that_cannot_be_read_leaves_the_counters_out_of_the_scrape(tmp_path, caplog):
    (tmp_path / "metrics.sqlite").mkdir()  # exists, but is no database
    with caplog.at_level(logging.WARNING):
        text = render(pipeline_registry(MetricsStore(tmp_path / "metrics.sqlite")))
    assert "itel_tracking_worker_delta_writes_total" not in text
    assert "metrics store" in caplog.text and "not read" in caplog.text
