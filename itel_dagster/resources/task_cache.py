"""The ClaimX task cache shared by both workers, across runs and processes (a SQLite file).

Entries live `ttl_seconds` (60 by default) from when they were fetched. Only answers are cached
(a task or "not found"), never a failure, so an outage is not remembered past its end.

Claims keep two runs (both workers read the same events at the same time) from fetching the same
task together: a run claims the ids it is about to fetch; another run missing the same ids waits
for the answers instead of asking ClaimX again. A claim lapses after its lease (a run that died)
and is released without an answer when the fetch failed, so nobody waits for nothing.
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

_CLAIMS = """
CREATE TABLE IF NOT EXISTS claimx_claims (
    assignment_id INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    claimed_at REAL NOT NULL
)
"""


def _chunks(ids: list[int], size: int = 500):
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


class TaskCache:
    def __init__(self, path: Path, ttl_seconds: float = 60.0):
        self.path = path
        self.ttl_seconds = ttl_seconds
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(_SCHEMA)
            connection.execute(_CLAIMS)

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
            # One transaction: in autocommit each row was its own commit and WAL sync, about
            # 0.3 ms a row, 2 s of a 7,000-lookup batch.
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.executemany(
                    "INSERT OR REPLACE INTO claimx_tasks VALUES (?, ?, ?, ?)",
                    [(aid, status, body, fetched_at) for aid, (status, body) in entries.items()],
                )
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise

    def claim(self, assignment_ids: list[int], owner: str, lease_seconds: float,
              now: float | None = None) -> set[int]:
        """Claims the ids nobody holds a live claim on; returns those now held by `owner`."""
        if not assignment_ids or self.ttl_seconds <= 0:
            return set(assignment_ids)
        now = now or time.time()
        mine: set[int] = set()
        with closing(self._connect()) as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                for chunk in _chunks(assignment_ids):
                    marks = ",".join("?" * len(chunk))
                    connection.execute(
                        f"DELETE FROM claimx_claims WHERE assignment_id IN ({marks}) "
                        "AND claimed_at < ?", [*chunk, now - lease_seconds])
                    connection.executemany(
                        "INSERT OR IGNORE INTO claimx_claims VALUES (?, ?, ?)",
                        [(a, owner, now) for a in chunk])
                    mine.update(a for (a,) in connection.execute(
                        f"SELECT assignment_id FROM claimx_claims WHERE owner = ? "
                        f"AND assignment_id IN ({marks})", [owner, *chunk]))
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        return mine

    def claimed(self, assignment_ids: list[int], lease_seconds: float,
                now: float | None = None) -> set[int]:
        """The ids someone holds a live claim on."""
        if not assignment_ids:
            return set()
        oldest = (now or time.time()) - lease_seconds
        held: set[int] = set()
        with closing(self._connect()) as connection:
            for chunk in _chunks(assignment_ids):
                marks = ",".join("?" * len(chunk))
                held.update(a for (a,) in connection.execute(
                    f"SELECT assignment_id FROM claimx_claims WHERE assignment_id IN ({marks}) "
                    "AND claimed_at >= ?", [*chunk, oldest]))
        return held

    def release(self, assignment_ids: list[int], owner: str) -> None:
        if not assignment_ids:
            return
        with closing(self._connect()) as connection:
            for chunk in _chunks(assignment_ids):
                marks = ",".join("?" * len(chunk))
                connection.execute(
                    f"DELETE FROM claimx_claims WHERE owner = ? AND assignment_id IN ({marks})",
                    [owner, *chunk])
