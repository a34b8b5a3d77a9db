"""Which backend holds the shared state (itel_dagster/state/): SQLite files by default, PostgreSQL
with ITEL_STATE_URL, an explicit path always a file. No server: PostgreSQL stores connect at
first use (test_state_postgres.py runs them against a real one)."""

from __future__ import annotations

import pytest

from itel_dagster.metrics.store import MetricsStore
from itel_dagster.resources.circuit_breaker import SqliteBreakerStore
from itel_dagster.resources.task_cache import TaskCache
from itel_dagster.state import open_breaker_store, open_metrics_store, open_task_cache, state_url
from itel_dagster.state.postgres import (
    PostgresBreakerStore,
    PostgresMetricsStore,
    PostgresTaskCache,
    masked_url,
)

URL = "postgresql://itel:s3cret@db.example:5432/itel_state"


def test_without_a_state_url_the_state_is_in_sqlite_files_under_the_state_dir(tmp_path,
                                                                              monkeypatch):
    monkeypatch.delenv("ITEL_STATE_URL", raising=False)
    monkeypatch.setenv("ITEL_STATE_DIR", str(tmp_path))
    cache, breaker, metrics = open_task_cache(60), open_breaker_store(), open_metrics_store()
    assert isinstance(cache, TaskCache) and cache.path == tmp_path / "cache/claimx_tasks.sqlite"
    assert isinstance(breaker, SqliteBreakerStore)
    assert breaker.path == tmp_path / "itel_circuit_breaker.sqlite"
    assert isinstance(metrics, MetricsStore) and metrics.path == tmp_path / "metrics.sqlite"


def test_a_state_url_puts_every_store_in_postgres_and_never_shows_the_password(monkeypatch):
    monkeypatch.setenv("ITEL_STATE_URL", URL)
    stores = [open_task_cache(60), open_breaker_store(), open_metrics_store()]
    assert [type(s) for s in stores] == [PostgresTaskCache, PostgresBreakerStore,
                                         PostgresMetricsStore]
    assert {s.path for s in stores} == {"postgresql://itel:***@db.example:5432/itel_state"}


def test_an_explicit_path_stays_a_file_even_with_a_state_url(tmp_path, monkeypatch):
    monkeypatch.setenv("ITEL_STATE_URL", URL)
    assert isinstance(open_task_cache(60, tmp_path / "cache.sqlite"), TaskCache)
    assert isinstance(open_breaker_store(tmp_path / "breaker.sqlite"), SqliteBreakerStore)
    assert isinstance(open_metrics_store(tmp_path / "metrics.sqlite"), MetricsStore)


@pytest.mark.parametrize("url", ["mysql://db/x", "sqlite:///tmp/x.db", "/var/lib/itel"])
def test_a_state_url_other_than_postgresql_is_refused(url, monkeypatch):
    monkeypatch.setenv("ITEL_STATE_URL", url)
    with pytest.raises(ValueError, match="ITEL_STATE_URL must be a postgresql:// URL"):
        state_url()


def test_masked_url_keeps_a_url_without_password():
    assert masked_url("postgresql://itel@db:5432/x") == "postgresql://itel@db:5432/x"
