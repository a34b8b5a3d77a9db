"""The shared state on PostgreSQL (ITEL_STATE_URL=postgresql://...): the ClaimX task cache, the
iTel breaker's row and the metric sums, for run processes on any number of machines.

Same semantics as the SQLite files: the breaker's read-modify-write holds the row lock
(SELECT ... FOR UPDATE), so one caller gets the probe; claims are taken under one advisory lock,
so one process fetches an assignment per TTL; metric sums are `value = value + excluded.value`
upserts. Bulk operations are one statement over arrays (unnest), never a query per row.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg2

from itel_dagster.metrics.store import SampleKey, sample_key
from itel_dagster.resources.circuit_breaker import (
    CLOSED,
    SELECT_BREAKER,
    BreakerRow,
    update_breaker_sql,
)

# pg_advisory_xact_lock keys: creating the tables (CREATE TABLE IF NOT EXISTS races between
# processes in PostgreSQL), and taking ClaimX claims.
_SCHEMA_LOCK, _CLAIMS_LOCK = 0x17E15C4E, 0x17E1C1A1


def masked_url(url: str) -> str:
    """The URL as logs and the CLI show it: the password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresConnection:
    """One connection per object and process, opened at first use, opened again after a fork
    (a forked run must never share its parent's socket) or a broken connection. Calls from the
    sender's threads take turns: a transaction never interleaves with another thread's."""

    def __init__(self, url: str, schema: str):
        self.url = url
        self.where = masked_url(url)
        self._schema = schema
        self._connection = None
        self._pid = None
        self._lock = threading.RLock()

    def _open(self):
        if self._connection is not None and self._pid == os.getpid() and not self._connection.closed:
            return self._connection
        connection = psycopg2.connect(self.url, connect_timeout=10,
                                      application_name="itel-dagster-state")
        with connection, connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            cursor.execute(self._schema)
        connection.autocommit = True
        self._connection, self._pid = connection, os.getpid()
        return connection

    @contextmanager
    def cursor(self, transaction: bool = False) -> Iterator:
        """A cursor; with `transaction`, its statements commit together (or roll back)."""
        with self._lock:
            connection = self._open()
            try:
                if not transaction:
                    with connection.cursor() as cursor:
                        yield cursor
                    return
                connection.autocommit = False
                try:
                    with connection, connection.cursor() as cursor:  # commit or rollback
                        yield cursor
                finally:
                    connection.autocommit = True
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                self.close()  # a dropped connection: the next call connects again
                raise

    def close(self) -> None:
        if self._connection is not None and self._pid == os.getpid():
            self._connection.close()
        self._connection = None


# -- the ClaimX task cache (same interface as resources/task_cache.TaskCache) ----------------------
_CACHE_SCHEMA = """
CREATE TABLE IF NOT EXISTS claimx_tasks (
    assignment_id BIGINT PRIMARY KEY,
    status TEXT NOT NULL,
    body TEXT,
    fetched_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS claimx_claims (
    assignment_id BIGINT PRIMARY KEY,
    owner TEXT NOT NULL,
    claimed_at DOUBLE PRECISION NOT NULL
);
"""


class PostgresTaskCache:
    def __init__(self, url: str, ttl_seconds: float = 60.0):
        self.ttl_seconds = ttl_seconds
        self.db = PostgresConnection(url, _CACHE_SCHEMA)
        self.path = self.db.where

    def get_many(self, assignment_ids: list[int], now: float | None = None) -> dict[int, tuple]:
        if not assignment_ids or self.ttl_seconds <= 0:
            return {}
        oldest = (now or time.time()) - self.ttl_seconds
        with self.db.cursor() as cursor:
            cursor.execute("SELECT assignment_id, status, body FROM claimx_tasks "
                           "WHERE assignment_id = ANY(%s) AND fetched_at >= %s",
                           (list(assignment_ids), oldest))
            return {aid: (status, body) for aid, status, body in cursor.fetchall()}

    def put_many(self, entries: dict[int, tuple], now: float | None = None) -> None:
        if not entries or self.ttl_seconds <= 0:
            return
        ids = sorted(entries)  # one lock order for every writer
        with self.db.cursor() as cursor:
            cursor.execute(
                "INSERT INTO claimx_tasks (assignment_id, status, body, fetched_at) "
                "SELECT a, s, b, %s FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS t(a, s, b) "
                "ON CONFLICT (assignment_id) DO UPDATE SET status = excluded.status, "
                "body = excluded.body, fetched_at = excluded.fetched_at",
                (now or time.time(), ids, [entries[a][0] for a in ids],
                 [entries[a][1] for a in ids]))

    def claim(self, assignment_ids: list[int], owner: str, lease_seconds: float,
              now: float | None = None) -> set[int]:
        """Claims the ids nobody holds a live claim on; returns those now held by `owner`."""
        if not assignment_ids or self.ttl_seconds <= 0:
            return set(assignment_ids)
        now = now or time.time()
        ids = sorted(set(assignment_ids))
        with self.db.cursor(transaction=True) as cursor:
            # Claims take turns, as SQLite's BEGIN IMMEDIATE made them: no two claimers
            # deadlock on each other's rows.
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_CLAIMS_LOCK,))
            cursor.execute("DELETE FROM claimx_claims WHERE assignment_id = ANY(%s) "
                           "AND claimed_at < %s", (ids, now - lease_seconds))
            cursor.execute("INSERT INTO claimx_claims (assignment_id, owner, claimed_at) "
                           "SELECT a, %s, %s FROM unnest(%s::bigint[]) AS t(a) "
                           "ON CONFLICT (assignment_id) DO NOTHING", (owner, now, ids))
            cursor.execute("SELECT assignment_id FROM claimx_claims WHERE owner = %s "
                           "AND assignment_id = ANY(%s)", (owner, ids))
            return {a for (a,) in cursor.fetchall()}

    def claimed(self, assignment_ids: list[int], lease_seconds: float,
                now: float | None = None) -> set[int]:
        if not assignment_ids:
            return set()
        oldest = (now or time.time()) - lease_seconds
        with self.db.cursor() as cursor:
            cursor.execute("SELECT assignment_id FROM claimx_claims WHERE assignment_id = ANY(%s) "
                           "AND claimed_at >= %s", (list(assignment_ids), oldest))
            return {a for (a,) in cursor.fetchall()}

    def release(self, assignment_ids: list[int], owner: str) -> None:
        if not assignment_ids:
            return
        with self.db.cursor() as cursor:
            cursor.execute("DELETE FROM claimx_claims WHERE owner = %s AND assignment_id = ANY(%s)",
                           (owner, list(assignment_ids)))


# -- the iTel breaker's row (a store of resources/circuit_breaker.CircuitBreaker) ----------------
_BREAKER_SCHEMA = """
CREATE TABLE IF NOT EXISTS circuit_breaker (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    state TEXT NOT NULL,
    consecutive_failures INTEGER NOT NULL,
    opened_at DOUBLE PRECISION,
    probe_started_at DOUBLE PRECISION,
    opened_count INTEGER NOT NULL,
    open_until DOUBLE PRECISION,     -- 'Infinity': held until closed by hand
    cause TEXT
);
INSERT INTO circuit_breaker (id, state, consecutive_failures, opened_count)
VALUES (1, 'closed', 0, 0) ON CONFLICT (id) DO NOTHING;
"""


class PostgresBreakerStore:
    def __init__(self, url: str):
        assert CLOSED == "closed"  # the schema's initial row
        self.db = PostgresConnection(url, _BREAKER_SCHEMA)
        self.path = self.db.where

    def read(self) -> BreakerRow:
        with self.db.cursor() as cursor:
            cursor.execute(SELECT_BREAKER)
            return BreakerRow(*cursor.fetchone())

    @contextmanager
    def locked(self) -> Iterator[BreakerRow]:
        """The row under its row lock from the read to the write (every machine waits)."""
        with self.db.cursor(transaction=True) as cursor:
            cursor.execute(SELECT_BREAKER + " FOR UPDATE")
            row = BreakerRow(*cursor.fetchone())
            yield row
            cursor.execute(update_breaker_sql("%s"), row.values())


# -- the metric sums (same interface as metrics/store.MetricsStore) ------------------------------
_METRICS_SCHEMA = """
CREATE TABLE IF NOT EXISTS metric_values (
    name TEXT NOT NULL,
    labels TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (name, labels)
);
"""


class PostgresMetricsStore:
    def __init__(self, url: str):
        self.db = PostgresConnection(url, _METRICS_SCHEMA)
        self.path = self.db.where

    def add(self, increments: Mapping[SampleKey, float]) -> None:
        """Every increment in one statement (all or none)."""
        rows = sorted((name, json.dumps(dict(labels), sort_keys=True), amount)
                      for (name, labels), amount in increments.items() if amount)
        if not rows:
            return
        names, labels, amounts = map(list, zip(*rows))
        with self.db.cursor() as cursor:
            # Sorted keys: two processes adding to the same rows lock them in the same order.
            cursor.execute(
                "INSERT INTO metric_values (name, labels, value) "
                "SELECT n, l, v FROM unnest(%s::text[], %s::text[], %s::float8[]) AS t(n, l, v) "
                "ORDER BY n, l "
                "ON CONFLICT (name, labels) DO UPDATE SET value = metric_values.value + excluded.value",
                (names, labels, amounts))

    def values(self) -> dict[SampleKey, float]:
        with self.db.cursor() as cursor:
            cursor.execute("SELECT name, labels, value FROM metric_values")
            rows = cursor.fetchall()
        return {sample_key(name, **json.loads(labels)): value for name, labels, value in rows}
