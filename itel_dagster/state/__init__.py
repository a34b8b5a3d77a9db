"""Where the shared state lives: the ClaimX task cache, the iTel circuit breaker and the metric sums.

SQLite files under ITEL_STATE_DIR by default (every process on one machine), or one PostgreSQL
database when ITEL_STATE_URL=postgresql://... is set (run processes on any machine). Dagster's own
storage is not here: that is the instance's dagster.yaml (deploy/dagster.postgres.yaml).
"""

from __future__ import annotations

import os
from pathlib import Path

from itel_dagster.metrics.store import MetricsStore, default_store_path
from itel_dagster.resources.circuit_breaker import BreakerStore, SqliteBreakerStore
from itel_dagster.resources.task_cache import TaskCache
from itel_dagster.settings.paths import state_dir

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def state_url() -> str | None:
    """ITEL_STATE_URL when set (a postgresql:// URL), else None: SQLite under ITEL_STATE_DIR."""
    url = os.environ.get("ITEL_STATE_URL", "").strip()
    if not url:
        return None
    if not url.startswith(POSTGRES_SCHEMES):
        raise ValueError("ITEL_STATE_URL must be a postgresql:// URL (unset: SQLite files "
                         "under ITEL_STATE_DIR)")
    return url


# One store object per URL and process: each keeps its one connection (state/postgres.py).
_postgres_stores: dict[tuple[str, str], object] = {}


def _postgres(kind: str, url: str):
    from itel_dagster.state import postgres

    key = (kind, url)
    if key not in _postgres_stores:
        _postgres_stores[key] = {"breaker": postgres.PostgresBreakerStore,
                                 "metrics": postgres.PostgresMetricsStore}[kind](url)
    return _postgres_stores[key]


def open_task_cache(ttl_seconds: float, path: Path | None = None):
    """The ClaimX task cache: a SQLite file at `path` when given, else PostgreSQL when
    ITEL_STATE_URL is set, else <ITEL_STATE_DIR>/cache/claimx_tasks.sqlite."""
    url = None if path else state_url()
    if url:
        from itel_dagster.state.postgres import PostgresTaskCache

        return PostgresTaskCache(url, ttl_seconds)
    return TaskCache(path or state_dir() / "cache" / "claimx_tasks.sqlite", ttl_seconds)


def open_breaker_store(path: Path | None = None) -> BreakerStore:
    """The iTel breaker's row, chosen as open_task_cache chooses
    (default file <ITEL_STATE_DIR>/itel_circuit_breaker.sqlite)."""
    url = None if path else state_url()
    if url:
        return _postgres("breaker", url)
    return SqliteBreakerStore(path or state_dir() / "itel_circuit_breaker.sqlite")


def open_metrics_store(path: Path | None = None):
    """The metric sums, chosen as open_task_cache chooses (default file
    <ITEL_STATE_DIR>/metrics.sqlite)."""
    url = None if path else state_url()
    if url:
        return _postgres("metrics", url)
    return MetricsStore(path or default_store_path())
