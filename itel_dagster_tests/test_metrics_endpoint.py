"""The /metrics endpoint against the real pipeline: its counters equal what Delta, the send ledger,
the iTel simulator and Kafka hold, whichever run wrote them; broken metrics never fail a run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from contextlib import contextmanager

import httpx
import polars as pl
from prometheus_client.parser import text_string_to_metric_families

from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.kafka.offsets import group_progress
from itel_dagster.metrics.exporter import pipeline_registry, serve
from itel_dagster.settings.paths import PROJECT_ROOT
from itel_dagster.settings.workers import load_workers

TRACKING = "itel_cabinet_tracking_worker"
API = "itel_cabinet_api_worker"


class Scrape:
    """One GET /metrics, parsed by prometheus_client's own parser."""

    def __init__(self, url: str):
        response = httpx.get(url, timeout=30)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        self.samples = [s for family in text_string_to_metric_families(response.text)
                        for s in family.samples]

    def value(self, name: str, **labels: str) -> float:
        [value] = [s.value for s in self.samples if s.name == name and s.labels == labels]
        return value

    def total(self, name: str, **labels: str) -> float:
        """Sum over every series of `name` whose labels include `labels`."""
        return sum(s.value for s in self.samples
                   if s.name == name and labels.items() <= s.labels.items())

    def by_partition(self, name: str, group: str) -> dict[int, float]:
        return {int(s.labels["partition"]): s.value for s in self.samples
                if s.name == name and s.labels["group"] == group}


def kafka_lag(pipeline, worker: str) -> dict[int, int]:
    settings = pipeline.workers[worker]
    return {p.partition: p.lag for p in group_progress(pipeline.bootstrap, settings.consumer_group,
                                                        settings.input_topic)}


@contextmanager
def metrics_command():
    """`itel-dagster metrics serve` in its own process, as `itel-dagster up` starts it, with the
    test's environment (its state dir, config and broker)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "itel_dagster.cli", "metrics", "serve", "--port", "0"],
        cwd=PROJECT_ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        line = server.stdout.readline()
        match = re.search(r"metrics on (http://\S+/metrics)", line)
        assert match, f"metrics serve printed {line!r}"
        yield match.group(1)
    finally:
        server.terminate()
        assert server.wait(30) == 0


@contextmanager
def metrics_server(bootstrap: str):
    server = serve(pipeline_registry(bootstrap_servers=lambda: bootstrap), "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def test_counters_equal_delta_ledger_and_kafka_across_run_processes(pipeline, itel_simulator):
    records = list(generate_records(count=200, seed=91, bad_fraction=0.1, days=2))
    pipeline.produce(records)
    bad = sum(1 for r in records if r.bad_kind is not None)
    with metrics_command() as url:
        before = Scrape(url)
        for worker in (TRACKING, API):
            group = pipeline.workers[worker].consumer_group
            lag = kafka_lag(pipeline, worker)
            assert before.by_partition("itel_consumer_lag", group) == lag
            assert sum(lag.values()) == len(records) == pipeline.lag(worker)
            assert before.by_partition("itel_consumer_committed_offset", group) == {}
        assert before.total("itel_tracking_worker_messages_processed_total") == 0

        assert all(r.success for r in pipeline.drain(TRACKING) + pipeline.drain(API))
        after = Scrape(url)

    table = pipeline.tracking_table()
    assert after.value("itel_tracking_worker_delta_writes_total") == table.height > 0
    assert after.value("itel_tracking_worker_delta_write_errors_total") == 0
    assert after.value("itel_tracking_worker_messages_processed_total",
                       outcome="succeeded") == table.height
    assert after.value("itel_tracking_worker_messages_processed_total", outcome="failed") == bad
    assert after.total("itel_tracking_worker_messages_processed_total") == len(records)

    ledger = pipeline.sends_table()
    accepted = ledger.filter(pl.col("outcome") == "accepted").height
    assert after.value("itel_api_worker_messages_processed_total", outcome="succeeded") == \
        accepted == len(records) - bad
    assert after.value("itel_api_worker_messages_processed_total", outcome="failed") == bad
    calls = after.total("itel_api_worker_api_calls_total")
    assert calls == ledger["attempts"].sum() == itel_simulator.stats()["total"]
    assert after.value("itel_api_worker_api_calls_total", status_class="2xx") == calls
    assert after.total("itel_api_worker_api_errors_total") == 0
    assert after.value("itel_api_worker_api_latency_seconds_count") == calls
    assert after.value("itel_api_worker_api_latency_seconds_bucket", le="+Inf") == calls
    assert after.value("itel_api_worker_api_latency_seconds_sum") > 0

    for worker in (TRACKING, API):
        settings = pipeline.workers[worker]
        assert after.by_partition("itel_consumer_lag", settings.consumer_group) == \
            kafka_lag(pipeline, worker) == {0: 0, 1: 0, 2: 0}
        assert after.by_partition("itel_consumer_committed_offset", settings.consumer_group) == \
            after.by_partition("itel_consumer_log_end_offset", settings.consumer_group)
        assert after.value("itel_consumer_lag_scrape_success", group=settings.consumer_group,
                           topic=settings.input_topic) == 1

    # A re-executed API run sends nothing again, and its commit is refused (the group moved
    # past its start): counted as refused, no new calls.
    first_api_run = next(r for r in pipeline.results
                         if r.dagster_run.job_name == "itel_cabinet_api_job")
    assert after.value("itel_commits_refused_total", worker=API) == 0
    rerun = pipeline.execute(API, _request_of(first_api_run))
    assert not rerun.success
    with metrics_server(pipeline.bootstrap) as url:
        again = Scrape(url)
    assert again.value("itel_commits_refused_total", worker=API) == 1
    assert again.total("itel_api_worker_api_calls_total") == calls


def _request_of(result):
    import dagster as dg

    run = result.dagster_run
    return dg.RunRequest(run_config=run.run_config, tags=run.tags,
                         partition_key=run.tags.get("dagster/partition"))


def test_failed_requests_to_itel_are_counted_as_errors(pipeline, itel_simulator):
    # One 503 and one reset connection: below the test breaker's threshold of 3 in a row.
    itel_simulator.set_faults(burst_5xx=1, reset_connections=1)
    records = list(generate_records(count=30, seed=92, days=1))
    pipeline.produce(records)
    assert all(r.success for r in pipeline.drain(API))
    ledger = pipeline.sends_table()
    assert ledger.filter(pl.col("outcome") == "accepted").height == len(records)
    attempts = ledger["attempt_log"].str.split("\n").explode()  # one line per attempt
    failed_5xx = attempts.str.starts_with("HTTP 5").sum()
    failed_transport = (~attempts.str.starts_with("HTTP ")).sum()
    assert (failed_5xx, failed_transport) == (1, 1)

    with metrics_server(pipeline.bootstrap) as url:
        scrape = Scrape(url)
    assert scrape.value("itel_api_worker_api_errors_total", status_class="5xx") == failed_5xx
    assert scrape.value("itel_api_worker_api_errors_total",
                        status_class="transport_error") == failed_transport
    assert scrape.total("itel_api_worker_api_errors_total") == 2
    assert scrape.total("itel_api_worker_api_calls_total") == ledger["attempts"].sum() == \
        len(records) + 2
    assert scrape.value("itel_api_worker_api_latency_seconds_count") == len(records) + 2


def test_delta_write_errors_count_failed_batches(pipeline, monkeypatch):
    blocker = pipeline.root / "not-a-directory"
    blocker.write_text("a file where the Delta root should be")
    monkeypatch.setenv("ITEL_DELTA_ROOT", str(blocker / "delta"))
    records = list(generate_records(count=40, seed=93, days=1))
    pipeline.produce(records)
    failed_runs = pipeline.drain(TRACKING)
    assert failed_runs and not any(r.success for r in failed_runs)

    monkeypatch.setenv("ITEL_DELTA_ROOT", str(pipeline.delta_root))
    later = list(generate_records(count=25, seed=94, days=1))
    pipeline.produce(later)
    assert all(r.success for r in pipeline.drain(TRACKING))

    with metrics_server(pipeline.bootstrap) as url:
        scrape = Scrape(url)
    assert scrape.value("itel_tracking_worker_delta_write_errors_total") == len(failed_runs)
    assert scrape.value("itel_tracking_worker_messages_processed_total",
                        outcome="failed") == len(records)
    assert scrape.value("itel_tracking_worker_delta_writes_total") == \
        pipeline.tracking_table().height == len(later)


def test_a_broken_metrics_store_never_fails_a_run(pipeline):
    state = pipeline.root / "var"
    state.mkdir(exist_ok=True)
    (state / "metrics.sqlite").mkdir()  # no database can be opened there
    records = list(generate_records(count=50, seed=95, days=1))
    pipeline.produce(records)
    assert all(r.success for r in pipeline.drain(TRACKING) + pipeline.drain(API))
    assert pipeline.tracking_table().height == len(records)
    assert pipeline.sends_table().filter(pl.col("outcome") == "accepted").height == len(records)
    for log in ("tracking_worker.log", "api_worker.log"):
        assert "metrics not recorded" in (pipeline.root / "logs" / log).read_text()

    # The endpoint still answers: lag from Kafka, the unreadable counters left out.
    with metrics_server(pipeline.bootstrap) as url:
        scrape = Scrape(url)
    assert scrape.total("itel_tracking_worker_delta_writes_total") == 0
    assert not [s for s in scrape.samples if s.name.startswith("itel_tracking_worker")]
    group = pipeline.workers[TRACKING].consumer_group
    assert scrape.by_partition("itel_consumer_lag", group) == {0: 0, 1: 0, 2: 0}
