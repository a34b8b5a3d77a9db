"""The iTel circuit breaker, shared by every run process and the sensor through one store: a SQLite
file on one machine, or PostgreSQL (ITEL_STATE_URL, state/postgres.py) across machines.

Only failures that say something about iTel's health count (connection errors, timeouts, 5xx,
429); a 4xx rejection is an answer. Every read-modify-write holds the store's write lock (SQLite's
`BEGIN IMMEDIATE`, PostgreSQL's `SELECT ... FOR UPDATE`), so across processes exactly one caller
gets the probe after a cool-down. A `closed` seen by this object is trusted for
`closed_recheck_seconds` (50 ms), so a healthy send costs no store access.
It may also be held open until a set time (a long Retry-After, an operator): a late success does
not close a hold, only a probe after it or `close()`. It records the cause of its opening.
"""

from __future__ import annotations

import math
import sqlite3
import time
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import astuple, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Protocol

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
# Added later: ALTERed into older files. open_until: a hold's end (NULL: the cool-down rules);
# cause: the last failure's description, or why it was held open.
_ADDED_COLUMNS = {"open_until": "REAL", "cause": "TEXT"}
FOREVER = float("inf")  # held open until closed by hand


def utc_text(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def until_text(epoch: float | None) -> str:
    """When an open breaker lets a probe go, as alerts, logs and the CLI say it (UTC)."""
    if epoch is None:
        return "the cool-down ends"
    if math.isinf(epoch):
        return "it is closed by hand (itel-dagster breaker close)"
    return utc_text(epoch)


@dataclass(frozen=True)
class BreakerState:
    state: str  # closed | open | half_open
    consecutive_failures: int
    opened_at: float | None  # epoch seconds
    reopens_at: float | None  # when a probe may go: end of the cool-down or hold (inf: closed
    # by hand only), or of a lost probe
    opened_count: int  # how many times it opened in total
    cause: str | None = None  # why it opened (or the last failure's cause while closed)


@dataclass
class BreakerRow:
    state: str
    consecutive_failures: int
    opened_at: float | None
    probe_started_at: float | None
    opened_count: int
    open_until: float | None
    cause: str | None

    def values(self) -> tuple:
        return astuple(self)


# The row's columns in BreakerRow's order, and the two statements every store runs on them.
BREAKER_COLUMNS = [f.name for f in fields(BreakerRow)]
SELECT_BREAKER = f"SELECT {', '.join(BREAKER_COLUMNS)} FROM circuit_breaker WHERE id = 1"


def update_breaker_sql(mark: str) -> str:
    """The UPDATE of every column, with the driver's parameter mark (? or %s)."""
    return (f"UPDATE circuit_breaker SET {', '.join(f'{c} = {mark}' for c in BREAKER_COLUMNS)} "
            "WHERE id = 1")


class SqliteBreakerStore:
    """The breaker's row in a SQLite file: every process of this machine shares it."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("BEGIN IMMEDIATE")  # processes may create or upgrade it at once
            connection.execute(_SCHEMA)
            present = {r[1] for r in connection.execute("PRAGMA table_info(circuit_breaker)")}
            for column, kind in _ADDED_COLUMNS.items():
                if column not in present:
                    connection.execute(f"ALTER TABLE circuit_breaker ADD COLUMN {column} {kind}")
            connection.execute(
                "INSERT OR IGNORE INTO circuit_breaker (id, state, consecutive_failures, "
                "opened_count) VALUES (1, ?, 0, 0)", (CLOSED,))
            connection.execute("COMMIT")

    def _connect(self) -> sqlite3.Connection:
        # Short-lived connections: runs are separate processes and may run concurrently.
        return sqlite3.connect(self.path, timeout=10.0, isolation_level=None)

    @staticmethod
    def _select(connection: sqlite3.Connection) -> BreakerRow:
        return BreakerRow(*connection.execute(SELECT_BREAKER).fetchone())

    def read(self) -> BreakerRow:
        with closing(self._connect()) as connection:
            return self._select(connection)

    @contextmanager
    def locked(self) -> Iterator[BreakerRow]:
        """The row under a write lock held from the read to the write: change it in place."""
        with closing(self._connect()) as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                row = self._select(connection)
                yield row
                connection.execute(update_breaker_sql("?"), row.values())
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise


class BreakerStore(Protocol):
    """Where the breaker's one row lives: SqliteBreakerStore (one machine) or
    state.postgres.PostgresBreakerStore (ITEL_STATE_URL, any number of machines)."""

    path: Path | str  # where, as logs and the CLI show it

    def read(self) -> BreakerRow: ...

    def locked(self) -> AbstractContextManager[BreakerRow]: ...


class CircuitBreaker:
    def __init__(self, store: Path | BreakerStore, failure_threshold: int = 5,
                 cool_down_seconds: float = 30.0, clock: Callable[[], float] = time.time,
                 probe_timeout_seconds: float | None = None, closed_recheck_seconds: float = 0.05):
        # A path: the SQLite file of this machine's processes.
        self.store = SqliteBreakerStore(Path(store)) if isinstance(store, (str, Path)) else store
        self.path = self.store.path
        self.failure_threshold = failure_threshold
        self.cool_down_seconds = cool_down_seconds
        # A probe with no recorded result after this long is taken as lost (its process died).
        self.probe_timeout_seconds = (
            probe_timeout_seconds if probe_timeout_seconds is not None else 2 * cool_down_seconds)
        self.clock = clock
        # Reading the store costs ~0.5 ms (a SQLite connection, a Postgres round trip), twice per
        # request otherwise; a breaker another process opens is seen here at most this much later.
        self.closed_recheck_seconds = closed_recheck_seconds
        self._seen: tuple[float, str, int] | None = None  # (monotonic, state, failures)

    def _remember(self, row: BreakerRow) -> None:
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
    def _change(self) -> Iterator[BreakerRow]:
        """The row under the store's write lock from the read to the write: change it in place."""
        with self.store.locked() as row:
            self._remember(row)
            yield row
        self._remember(row)

    def _snapshot(self) -> BreakerRow:
        row = self.store.read()
        self._remember(row)
        return row

    def _open_ends(self, row: BreakerRow) -> float:
        """When an open breaker lets a probe go: the hold's end, else the cool-down's."""
        if row.open_until is not None:
            return row.open_until
        return (row.opened_at or 0) + self.cool_down_seconds

    def state(self) -> BreakerState:
        row = self._snapshot()
        reopens_at = None
        if row.state == OPEN and row.opened_at is not None:
            reopens_at = self._open_ends(row)
        elif row.state == HALF_OPEN and row.probe_started_at is not None:
            reopens_at = row.probe_started_at + self.probe_timeout_seconds
        return BreakerState(row.state, row.consecutive_failures, row.opened_at, reopens_at,
                            row.opened_count, row.cause)

    def is_open_now(self) -> bool:
        row = self._snapshot()
        return row.state == OPEN and self.clock() < self._open_ends(row)

    def allow_request(self) -> bool:
        """Whether a request may go now; after a cool-down True for exactly one caller, the
        probe, until its result is recorded (or it is lost)."""
        if self._recently_closed() or self._snapshot().state == CLOSED:
            return True  # the common case needs no write lock
        with self._change() as row:
            now = self.clock()
            if row.state == CLOSED:
                return True
            if row.state == OPEN and now < self._open_ends(row):
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
            if row.state == OPEN and row.open_until is not None:
                return  # held: a late answer to a request sent before the hold ends nothing
            self._close(row)

    def close(self) -> None:
        """Closed now, whatever its state or hold (an operator's decision)."""
        with self._change() as row:
            self._close(row)

    @staticmethod
    def _close(row: BreakerRow) -> None:
        row.state, row.consecutive_failures = CLOSED, 0
        row.opened_at = row.probe_started_at = row.open_until = None
        row.cause = None

    def record_failure(self, cause: str | None = None) -> None:
        """One failed attempt that speaks of iTel's health (connection, timeout, 5xx, 429, the
        credentials refused); `cause` says what failed, shown when it opens."""
        with self._change() as row:
            row.consecutive_failures += 1
            failed_probe = row.state == HALF_OPEN
            if row.state != OPEN:
                row.cause = cause or row.cause
            if failed_probe or (row.state == CLOSED and
                                row.consecutive_failures >= self.failure_threshold):
                self._open(row)
            # Already open: a late failure of a request sent before it opened does not extend
            # the cool-down.

    def _open(self, row: BreakerRow, until: float | None = None) -> None:
        row.state, row.opened_at, row.probe_started_at = OPEN, self.clock(), None
        row.open_until = until
        row.opened_count += 1

    def hold_open(self, until: float, cause: str) -> None:
        """Open until `until` (epoch seconds; FOREVER: until close()), or later if it already
        is: no request, no probe before then."""
        with self._change() as row:
            if row.state != OPEN:
                self._open(row, until)
            elif until > self._open_ends(row):
                row.open_until = until
            else:
                return  # open until later already, for its own cause
            row.cause = cause
