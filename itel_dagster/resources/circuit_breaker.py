"""The iTel circuit breaker, shared by every run process and the sensor through one SQLite file.

Only failures that say something about iTel's health count (connection errors, timeouts, 5xx,
429); a 4xx rejection is an answer. Every read-modify-write is one `BEGIN IMMEDIATE` transaction,
so across processes exactly one caller gets the probe after a cool-down. A `closed` seen by this
object is trusted for `closed_recheck_seconds` (50 ms), so a healthy send costs no file access.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS circuit_breaker (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    state TEXT NOT NULL,                 -- closed | open | half_open
    consecutive_failures INTEGER NOT NULL,
    opened_at REAL,                      -- when it last opened (epoch seconds)
    probe_started_at REAL,               -- half_open: when the probe was let through
    opened_count INTEGER NOT NULL
)
"""


@dataclass(frozen=True)
class BreakerState:
    state: str  # closed | open | half_open
    consecutive_failures: int
    opened_at: float | None  # epoch seconds
    reopens_at: float | None  # when a probe may go: end of the cool-down, or of a lost probe
    opened_count: int  # how many times it opened in total


@dataclass
class _Row:
    state: str
    consecutive_failures: int
    opened_at: float | None
    probe_started_at: float | None
    opened_count: int


class CircuitBreaker:
    def __init__(self, path: Path, failure_threshold: int = 5, cool_down_seconds: float = 30.0,
                 clock: Callable[[], float] = time.time,
                 probe_timeout_seconds: float | None = None, closed_recheck_seconds: float = 0.05):
        self.path = path
        self.failure_threshold = failure_threshold
        self.cool_down_seconds = cool_down_seconds
        # A probe with no recorded result after this long is taken as lost (its process died).
        self.probe_timeout_seconds = (
            probe_timeout_seconds if probe_timeout_seconds is not None else 2 * cool_down_seconds)
        self.clock = clock
        # Opening a short-lived SQLite connection costs ~0.5 ms, twice per request otherwise; a
        # breaker another process opens is seen here at most this much later.
        self.closed_recheck_seconds = closed_recheck_seconds
        self._seen: tuple[float, str, int] | None = None  # (monotonic, state, failures)
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(_SCHEMA)
            connection.execute(
                "INSERT OR IGNORE INTO circuit_breaker VALUES (1, ?, 0, NULL, NULL, 0)", (CLOSED,))

    def _connect(self) -> sqlite3.Connection:
        # Short-lived connections: runs are separate processes and may run concurrently.
        return sqlite3.connect(self.path, timeout=10.0, isolation_level=None)

    def _read(self, connection: sqlite3.Connection) -> _Row:
        row = _Row(*connection.execute(
            "SELECT state, consecutive_failures, opened_at, probe_started_at, opened_count "
            "FROM circuit_breaker WHERE id = 1").fetchone())
        self._remember(row)
        return row

    def _remember(self, row: _Row) -> None:
        self._seen = (time.monotonic(), row.state, row.consecutive_failures)

    def _recently_closed(self, with_failures: bool = True) -> bool:
        """Whether this object saw the breaker closed (with no failures, unless `with_failures`)
        within closed_recheck_seconds."""
        if self._seen is None:
            return False
        seen_at, state, failures = self._seen
        return (state == CLOSED and (with_failures or failures == 0)
                and time.monotonic() - seen_at < self.closed_recheck_seconds)

    @contextmanager
    def _change(self) -> Iterator[_Row]:
        """The row under a write lock held from the read to the write: change it in place."""
        with closing(self._connect()) as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                row = self._read(connection)
                yield row
                connection.execute(
                    "UPDATE circuit_breaker SET state = ?, consecutive_failures = ?, "
                    "opened_at = ?, probe_started_at = ?, opened_count = ? WHERE id = 1",
                    (row.state, row.consecutive_failures, row.opened_at, row.probe_started_at,
                     row.opened_count))
                connection.execute("COMMIT")
                self._remember(row)
            except BaseException:
                connection.execute("ROLLBACK")
                raise

    def _snapshot(self) -> _Row:
        with closing(self._connect()) as connection:
            return self._read(connection)

    def state(self) -> BreakerState:
        row = self._snapshot()
        reopens_at = None
        if row.state == OPEN and row.opened_at is not None:
            reopens_at = row.opened_at + self.cool_down_seconds
        elif row.state == HALF_OPEN and row.probe_started_at is not None:
            reopens_at = row.probe_started_at + self.probe_timeout_seconds
        return BreakerState(row.state, row.consecutive_failures, row.opened_at, reopens_at,
                            row.opened_count)

    def is_open_now(self) -> bool:
        row = self._snapshot()
        return row.state == OPEN and self.clock() < (row.opened_at or 0) + self.cool_down_seconds

    def allow_request(self) -> bool:
        """Whether a request may go now; after a cool-down True for exactly one caller, the
        probe, until its result is recorded (or it is lost)."""
        if self._recently_closed() or self._snapshot().state == CLOSED:
            return True  # the common case needs no write lock
        with self._change() as row:
            now = self.clock()
            if row.state == CLOSED:
                return True
            if row.state == OPEN and now < (row.opened_at or 0) + self.cool_down_seconds:
                return False
            probe_lost = (row.state == HALF_OPEN and
                          now >= (row.probe_started_at or 0) + self.probe_timeout_seconds)
            if row.state == OPEN or probe_lost:
                row.state, row.probe_started_at = HALF_OPEN, now
                return True
            return False  # half open, the probe is still out

    def record_success(self) -> None:
        if self._recently_closed(with_failures=False):
            return  # nothing to change: no write lock for the common case
        row = self._snapshot()
        if row.state == CLOSED and row.consecutive_failures == 0:
            return
        with self._change() as row:
            row.state, row.consecutive_failures = CLOSED, 0
            row.opened_at = row.probe_started_at = None

    def record_failure(self) -> None:
        """One failed attempt that speaks of iTel's health (connection, timeout, 5xx, 429)."""
        with self._change() as row:
            row.consecutive_failures += 1
            failed_probe = row.state == HALF_OPEN
            if failed_probe or (row.state == CLOSED and
                                row.consecutive_failures >= self.failure_threshold):
                row.state, row.opened_at, row.probe_started_at = OPEN, self.clock(), None
                row.opened_count += 1
            # Already open: a late failure of a request sent before it opened does not extend
            # the cool-down.
