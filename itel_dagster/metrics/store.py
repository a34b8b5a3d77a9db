"""The metric values shared by every run process: one SQLite file (`<ITEL_STATE_DIR>/metrics.sqlite`)
of monotonically growing sums, one row per metric name and label set. With ITEL_STATE_URL the
same sums live in PostgreSQL (state/postgres.py); `state.open_metrics_store()` picks the backend.

Each flush is one transaction of `value = value + ?` upserts, so increments from any number of
processes add up and none is lost. It only adds: values are never set, lowered or reset here.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path

from itel_dagster.settings.paths import state_dir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS metric_values (
    name TEXT NOT NULL,       -- the sample name, e.g. itel_api_worker_api_latency_seconds_bucket
    labels TEXT NOT NULL,     -- JSON object with sorted keys, '{}' without labels
    value REAL NOT NULL,
    PRIMARY KEY (name, labels)
)
"""

_UPSERT = (
    "INSERT INTO metric_values (name, labels, value) VALUES (?, ?, ?) "
    "ON CONFLICT (name, labels) DO UPDATE SET value = value + excluded.value"
)

# A sample key: the sample name and its labels as sorted (name, value) pairs.
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def sample_key(name: str, **labels: str) -> SampleKey:
    return name, tuple(sorted((k, str(v)) for k, v in labels.items()))


def default_store_path() -> Path:
    return state_dir() / "metrics.sqlite"


class MetricsStore:
    def __init__(self, path: Path | None = None):
        self.path = path or default_store_path()
        self._ready = False

    def _connect(self) -> sqlite3.Connection:
        # Short-lived connections: run processes come and go and write concurrently.
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        # WAL with NORMAL: a commit survives a crashed process without its own fsync; only a
        # power loss can drop the last increments. A flush costs ~10-20 ms (the checkpoint when
        # the last connection closes), a few per run.
        connection.execute("PRAGMA synchronous=NORMAL")
        if not self._ready:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(_SCHEMA)
            self._ready = True
        return connection

    def add(self, increments: Mapping[SampleKey, float]) -> None:
        """Add every increment in one transaction (all or none)."""
        rows = [(name, json.dumps(dict(labels), sort_keys=True), amount)
                for (name, labels), amount in increments.items() if amount]
        if rows:
            _while_locked(lambda: self._add(rows))

    def _add(self, rows: list[tuple[str, str, float]]) -> None:
        with closing(self._connect()) as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.executemany(_UPSERT, rows)
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise

    def values(self) -> dict[SampleKey, float]:
        """Every sample recorded so far; empty when nothing was ever recorded."""
        if not self.path.exists():
            return {}

        def read() -> list[tuple[str, str, float]]:
            with closing(self._connect()) as connection:
                return connection.execute("SELECT name, labels, value FROM metric_values").fetchall()

        rows = _while_locked(read)
        return {sample_key(name, **json.loads(labels)): value for name, labels, value in rows}


def _while_locked(work, patience_seconds: float = 30.0):
    """Run `work` again while SQLite says the database is locked. The busy timeout does not cover
    every case: switching to WAL and lock upgrades between processes starting together answer
    "database is locked" at once (seen with four processes at one barrier)."""
    deadline = time.monotonic() + patience_seconds
    while True:
        try:
            return work()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.01, 0.1))
