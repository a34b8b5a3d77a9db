"""Dagster and the shared state on a real PostgreSQL server (fixtures/postgres_fixtures.py): both
workers end to end with ITEL_STATE_URL and deploy/dagster.postgres.yaml's instance; the breaker,
the ClaimX cache and the metric sums shared by separate OS processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid

import dagster as dg
import polars as pl
import psycopg2
import pytest

from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.metrics.store import sample_key
from itel_dagster.resources.circuit_breaker import CircuitBreaker
from itel_dagster.settings.paths import PROJECT_ROOT
from itel_dagster.state import open_metrics_store
from itel_dagster.state.postgres import PostgresBreakerStore
from itel_dagster_tests.fixtures.pipeline_fixtures import open_pipeline

pytestmark = pytest.mark.slow  # starts PostgreSQL and helper processes

API = "itel_cabinet_api_worker"
TRACKING = "itel_cabinet_tracking_worker"


def query(url: str, sql: str) -> list[tuple]:
    connection = psycopg2.connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()
    finally:
        connection.close()


def run_together(scripts: list[str]) -> list[str]:
    """Start one Python process per script; each prints 'ready' once set up, then waits for
    'go' on stdin, so the parts after it start together. Returns each process's last line."""
    processes = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  cwd=PROJECT_ROOT) for script in scripts]
    try:
        for process in processes:
            assert process.stdout.readline().strip() == "ready"
        for process in processes:
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=60)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    assert all(p.returncode == 0 for p in processes), outputs
    return [output.strip().splitlines()[-1] for output in outputs]


# Indented as the scripts are (each is dedented as a whole).
WAIT_FOR_GO = "    print('ready', flush=True); import sys; sys.stdin.readline()\n"


# -- both workers, state and Dagster instance on PostgreSQL ---------------------------------------
@pytest.fixture
def postgres_instance(postgres_server, tmp_path, monkeypatch):
    """A DagsterInstance from deploy/dagster.postgres.yaml, its DAGSTER_PG_* set to a new
    database."""
    database = f"dagster_{uuid.uuid4().hex[:10]}"
    postgres_server.create_database(database)
    for name, value in postgres_server.dagster_env(database).items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "deploy/dagster.postgres.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    instance = dg.DagsterInstance.get()
    yield instance
    instance.dispose()


@pytest.fixture
def postgres_pipeline(kafka_bootstrap, claimx_simulator, itel_simulator, tmp_path, monkeypatch,
                      state_url, postgres_instance):
    """The `pipeline` fixture with ITEL_STATE_URL set and runs on the Postgres instance."""
    yield from open_pipeline(kafka_bootstrap, claimx_simulator, itel_simulator, tmp_path,
                             monkeypatch, instance=postgres_instance)


def test_both_workers_end_to_end_with_state_and_dagster_on_postgres(
        postgres_pipeline, claimx_simulator, tmp_path, state_url, postgres_server):
    pipeline = postgres_pipeline
    records = list(generate_records(count=40, seed=18, bad_fraction=0.05, days=0.2))
    pipeline.produce(records)
    claimx_simulator.clear_stats()
    results = pipeline.drain(TRACKING) + pipeline.drain(API)
    assert results and all(r.success for r in results)

    valid = [json.loads(r.value) for r in records if r.bad_kind is None]
    assert set(pipeline.tracking_table()["event_id"]) == {e["event_id"] for e in valid}
    sends = pipeline.sends_table()
    assert set(sends.filter(pl.col("outcome") == "accepted")["event_id"]) == {
        e["event_id"] for e in valid}
    assert pipeline.lag(TRACKING) == pipeline.lag(API) == 0

    # The runs and their events are in the Postgres instance, not in files.
    dagster_url = postgres_server.url(os.environ["DAGSTER_PG_DB"])
    assert query(dagster_url, "SELECT count(*) FROM runs WHERE status = 'SUCCESS'") == [
        (len(results),)]
    assert query(dagster_url, "SELECT count(*) FROM event_logs")[0][0] > 10 * len(results)
    # The shared state is in ITEL_STATE_URL's database: the second worker's lookups were
    # answered by the first one's cache entries (one ClaimX request per assignment).
    assignments = {e["assignment_id"] for e in valid}
    cached = query(state_url, "SELECT assignment_id FROM claimx_tasks")
    assert {a for (a,) in cached} == assignments
    route = claimx_simulator.stats()["routes"]["GET /api/v1/tasks/{assignment_id}"]
    assert route["total"] == len(assignments)
    assert query(state_url, "SELECT state FROM circuit_breaker") == [("closed",)]
    assert query(state_url, "SELECT count(*) FROM metric_values")[0][0] > 0
    state_files = [p.name for p in (tmp_path / "var").rglob("*.sqlite")]
    assert state_files == [], "state written to SQLite files despite ITEL_STATE_URL"


# -- the breaker across processes -----------------------------------------------------------------
BREAKER = """
    from itel_dagster.resources.circuit_breaker import CircuitBreaker
    from itel_dagster.state.postgres import PostgresBreakerStore
    breaker = CircuitBreaker(PostgresBreakerStore({url!r}), failure_threshold=3,
                             cool_down_seconds={cool_down})
    breaker.state()  # connected before 'go'
"""


def test_breaker_opened_by_one_process_is_open_for_another_and_lets_one_probe(state_url):
    cool_down = 1.0
    [opened] = run_together([BREAKER.format(url=state_url, cool_down=cool_down) + WAIT_FOR_GO + """
    for _ in range(3):
        breaker.record_failure("iTel answered HTTP 503")
    print(breaker.state().state)
    """])
    assert opened == "open"
    here = CircuitBreaker(PostgresBreakerStore(state_url), failure_threshold=3,
                          cool_down_seconds=cool_down)
    state = here.state()
    assert (state.state, state.cause, state.opened_count) == ("open", "iTel answered HTTP 503", 1)
    assert here.allow_request() is False
    time.sleep(cool_down + 0.1)
    # After the cool-down, processes ask at the same moment: exactly one gets the probe.
    answers = run_together([BREAKER.format(url=state_url, cool_down=cool_down) + WAIT_FOR_GO + """
    print(breaker.allow_request())
    """] * 4)
    assert sorted(answers) == ["False", "False", "False", "True"]
    assert here.state().state == "half_open"


# -- the ClaimX cache across processes ------------------------------------------------------------
LOOKUP = """
    import json
    from itel_dagster.resources.claimx_api import ClaimxLookupClient
    from itel_dagster.settings.connections import ClaimxConnectionSettings
    from itel_dagster.state.postgres import PostgresTaskCache
    settings = ClaimxConnectionSettings(
        name="claimx_api", base_url={base_url!r}, auth_token="claimx-dev-token",
        timeout_seconds=3, connect_timeout_seconds=1, max_retries=2, retry_backoff_base=0.05,
        retry_backoff_max=0.2, max_concurrency=4)
    client = ClaimxLookupClient(settings, PostgresTaskCache({url!r}, 60))
    client.lookup([])
"""


def test_two_processes_missing_the_same_ids_fetch_each_once(state_url, claimx):
    claimx.set_faults(latency_ms=100)  # the two lookups overlap for sure
    claimx.clear_stats()
    ids = list(range(1_000_200, 1_000_230))
    script = LOOKUP.format(base_url=claimx.url, url=state_url) + WAIT_FOR_GO + f"""
    batch = client.lookup({ids!r})
    print(json.dumps([batch.requests_made, batch.cache_hits,
                      sorted(a for a, r in batch.results.items() if r.status == "enriched")]))
    """
    batches = [json.loads(line) for line in run_together([script, script])]
    assert all(enriched == ids for _, _, enriched in batches)
    assert sum(requests for requests, _, _ in batches) == len(ids)
    assert claimx.stats()["routes"]["GET /api/v1/tasks/{assignment_id}"]["total"] == len(ids)
    assert max(hits for _, hits, _ in batches) > 0  # one waited for the other's answers
    assert query(state_url, "SELECT count(*) FROM claimx_claims") == [(0,)]  # all released


# -- metric sums across processes -----------------------------------------------------------------
def test_metric_sums_from_two_processes_add_up(state_url):
    script = f"""
    from itel_dagster.metrics.store import sample_key
    from itel_dagster.state import open_metrics_store
    store = open_metrics_store()  # ITEL_STATE_URL from the environment
    store.values()
""" + WAIT_FOR_GO + """
    for _ in range(50):
        store.add({sample_key("itel_test_events_total", worker="api"): 1,
                   sample_key("itel_test_seconds_sum"): 0.5})
    print("done")
    """
    assert run_together([script, script]) == ["done", "done"]
    values = open_metrics_store().values()
    assert values[sample_key("itel_test_events_total", worker="api")] == 100
    assert values[sample_key("itel_test_seconds_sum")] == 50.0
