"""The ClaimX task cache shared by both workers, across runs and processes (a SQLite file).

Entries live `ttl_seconds` (60 by default) from when they were fetched. Only answers are cached
(a task or "not found"), never a failure, so an outage is not remembered past its end.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS claimx_tasks (
    assignment_id INTEGER PRIMARY KEY,
    status TEXT NOT NULL,           -- enriched | not_found
    body TEXT,                      -- the task JSON when enriched
    fetched_at REAL NOT NULL
)
"""


class TaskCache:
    def __init__(self, path: Path, ttl_seconds: float = 60.0):
        self.path = path
        self.ttl_seconds = ttl_seconds
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # Short-lived connections: runs are separate processes and may run concurrently.
        return sqlite3.connect(self.path, timeout=10.0, isolation_level=None)

    def get_many(self, assignment_ids: list[int], now: float | None = None) -> dict[int, tuple]:
        """assignment_id -> (status, body) for fresh entries."""
        if not assignment_ids or self.ttl_seconds <= 0:
            return {}
        oldest = (now or time.time()) - self.ttl_seconds
        found: dict[int, tuple] = {}
        with closing(self._connect()) as connection:
            for chunk_start in range(0, len(assignment_ids), 500):
                chunk = assignment_ids[chunk_start:chunk_start + 500]
                marks = ",".join("?" * len(chunk))
                rows = connection.execute(
                    f"SELECT assignment_id, status, body FROM claimx_tasks "
                    f"WHERE assignment_id IN ({marks}) AND fetched_at >= ?",
                    [*chunk, oldest],
                )
                for assignment_id, status, body in rows:
                    found[assignment_id] = (status, body)
        return found

    def put_many(self, entries: dict[int, tuple], now: float | None = None) -> None:
        if not entries or self.ttl_seconds <= 0:
            return
        fetched_at = now or time.time()
        with closing(self._connect()) as connection:
            connection.executemany(
                "INSERT OR REPLACE INTO claimx_tasks VALUES (?, ?, ?, ?)",
                [(aid, status, body, fetched_at) for aid, (status, body) in entries.items()],
            )
