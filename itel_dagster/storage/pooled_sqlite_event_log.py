"""PooledSqliteEventLogStorage: Dagster's SQLite event log (one database per run, plus the index),
with each database's connection kept open instead of a new SQLAlchemy engine, connection and
dispose for every event.

Why: a micro-batch run writes 60-70 events, each one write. Dagster's SqliteEventLogStorage pays
about 10 ms (6 ms of CPU) per write on this 2-core machine; with the connection kept, under 1 ms.

Same files, schema and layout as the default (`$DAGSTER_HOME/history/runs/<run_id>.db` and
`index.db`), so switching to it or back needs no migration. A long-lived process (daemon,
webserver) keeps at most `max_open_databases` connections, the least recently used closed first.
A forked process never touches its parent's connections.

The databases are in WAL mode: a kept connection leaves its writes in `<run_id>.db-wal` until a
checkpoint, so live log views (the webserver's watch) follow that file too.

A new run's database is a copy of one empty database per process, made once by Dagster's own
`_initdb` (tables, indexes, WAL mode, the alembic stamp), put in place atomically. Dagster's
`_initdb` creates the tables and stamps the revision for every run: about 80 ms of CPU here, and
each other process that opens the run's database checks the revision through alembic's script
directory, about 25 ms more (`python -m itel_dagster_bench.event_log_shards`). A database this process did not create is checked by reading its
stamped revision (one query); only one that is not at the template's goes through `_initdb`.
"""

from __future__ import annotations

import os
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dagster import Field, IntSource, StringSource
# Relies on SqliteEventLogStorage's _connect, _initdb, _initialized_dbs, _db_lock, path_for_shard
# and conn_string_for_shard, and on its index database being named INDEX_SHARD_NAME.
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
    SqliteEventLogStorageWatchdog,
)
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DatabaseError
from sqlalchemy.pool import QueuePool
from watchdog.events import FileSystemEvent
from watchdog.observers import Observer

DEFAULT_MAX_OPEN_DATABASES = 16
WAL_FOLLOW_UP_SECONDS = 0.2


def default_base_dir() -> str:
    """Where Dagster's default event log storage keeps its databases."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise RuntimeError("PooledSqliteEventLogStorage needs base_dir or DAGSTER_HOME")
    return os.path.join(os.path.abspath(home), "history", "runs")


class _WalWatchdog(SqliteEventLogStorageWatchdog):
    """Dagster's watchdog follows `<run_id>.db` only; kept connections write `<run_id>.db-wal`.

    A commit appends to the -wal file (the change this sees) before it marks the commit in the
    shared index, so a read right then can miss the last event: a second read follows shortly.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._patterns = [self._log_path, f"{self._log_path}-wal"]
        self._reading = threading.Lock()
        self._follow_up: threading.Timer | None = None

    def _read(self) -> None:
        with self._reading:
            self._process_log()

    def on_modified(self, event: FileSystemEvent) -> None:
        self._read()
        if self._follow_up is not None:
            self._follow_up.cancel()
        self._follow_up = threading.Timer(WAL_FOLLOW_UP_SECONDS, self._read)
        self._follow_up.daemon = True
        self._follow_up.start()


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """dagster.yaml:

        event_log_storage:
          module: itel_dagster.storage.pooled_sqlite_event_log
          class: PooledSqliteEventLogStorage
          config: {}   # base_dir: default $DAGSTER_HOME/history/runs; max_open_databases: 16
    """

    def __init__(self, base_dir: str, max_open_databases: int = DEFAULT_MAX_OPEN_DATABASES,
                 inst_data=None):
        if max_open_databases < 1:
            raise ValueError(f"max_open_databases must be at least 1, got {max_open_databases}")
        self._max_open_databases = max_open_databases
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._engines_pid = os.getpid()
        super().__init__(base_dir, inst_data=inst_data)

    @classmethod
    def config_type(cls):
        return {
            "base_dir": Field(StringSource, is_required=False),
            "max_open_databases": Field(IntSource, is_required=False,
                                        default_value=DEFAULT_MAX_OPEN_DATABASES),
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(
            config_value.get("base_dir") or default_base_dir(),
            config_value.get("max_open_databases", DEFAULT_MAX_OPEN_DATABASES),
            inst_data=inst_data,
        )

    @property
    def open_databases(self) -> list[str]:
        """Shards with a kept connection, least recently used first."""
        return list(self._engines)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            with self._engine(shard).connect() as connection:
                with connection.begin():
                    yield connection

    def _own_engines(self) -> OrderedDict[str, Engine]:
        """This process's engines (call under self._db_lock)."""
        if self._engines_pid != os.getpid():
            # A fork inherited the parent's connections: SQLite forbids using them; drop them.
            self._engines = OrderedDict()
            self._engines_pid = os.getpid()
        return self._engines

    def _engine(self, shard: str) -> Engine:
        engine = self._own_engines().get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        engine = create_engine(
            self.conn_string_for_shard(shard),
            poolclass=QueuePool, pool_size=1, max_overflow=2,
            # The connection is used under self._db_lock from whichever thread holds it.
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
        )
        if shard not in self._initialized_dbs:
            self._prepare(shard, engine)
            self._initialized_dbs.add(shard)
        self._engines[shard] = engine
        while len(self._engines) > self._max_open_databases:
            _, oldest = self._engines.popitem(last=False)
            oldest.dispose()
        return engine

    def _prepare(self, shard: str, engine: Engine) -> None:
        """A run's database from the template when it does not exist yet; Dagster's `_initdb`
        only for the index and for a database not at the template's revision."""
        if shard == INDEX_SHARD_NAME:
            self._initdb(engine)
            return
        template = _shard_template(self)
        path = self.path_for_shard(shard)
        if not os.path.exists(path) and _place(template.content, path):
            return
        if _stamped_revision(engine) != template.revision:
            self._initdb(engine)  # being created by another process, or an older schema

    def _close(self, shard: str | None = None) -> None:
        """Closes one shard's kept connection, or all of them."""
        with self._db_lock:
            engines = self._own_engines()
            for name in list(engines) if shard is None else [shard]:
                engine = engines.pop(name, None)
                if engine is not None:
                    engine.dispose()

    def watch(self, run_id, cursor, callback) -> None:
        if not self._obs:
            self._obs = Observer()
            self._obs.start()
        watchdog = _WalWatchdog(self, run_id, callback, cursor)
        self._watchers[run_id][callback] = (
            watchdog, self._obs.schedule(watchdog, self._base_dir, recursive=True))

    def delete_events(self, run_id: str) -> None:
        super().delete_events(run_id)
        self._close(run_id)  # a deleted run writes no more

    def wipe(self) -> None:
        self._close()
        super().wipe()

    def dispose(self) -> None:
        self._close()
        super().dispose()


@dataclass(frozen=True)
class _ShardTemplate:
    content: bytes
    revision: str


_template: _ShardTemplate | None = None
_template_lock = threading.Lock()


def _shard_template(storage: SqliteEventLogStorage) -> _ShardTemplate:
    """An empty run database as Dagster's `_initdb` makes it, built once per process."""
    global _template
    with _template_lock:
        if _template is None:
            with tempfile.TemporaryDirectory(prefix="itel-event-log-template-") as scratch:
                path = Path(scratch) / "template.db"
                engine = create_engine(f"sqlite:///{path}")
                try:
                    storage._initdb(engine)
                    revision = _stamped_revision(engine)
                finally:
                    engine.dispose()  # the last connection checkpoints and removes the -wal
                if revision is None:
                    raise RuntimeError("Dagster's _initdb stamped no alembic revision")
                _template = _ShardTemplate(path.read_bytes(), revision)
        return _template


def _place(content: bytes, path: str) -> bool:
    """Writes `content` to `path` unless it exists (a complete file or none, never a part);
    False if it did not (another process put one there first)."""
    scratch = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    with open(scratch, "wb") as out:
        out.write(content)
    try:
        os.link(scratch, path)
        return True
    except OSError:  # it exists, or the filesystem has no hard links: Dagster's way then
        return False
    finally:
        os.unlink(scratch)


def _stamped_revision(engine: Engine) -> str | None:
    """The alembic revision a database is stamped with; None when it has none (yet)."""
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DatabaseError:
        return None
