"""The CPU a run's event-log database costs PooledSqliteEventLogStorage, against Dagster's own
per-run init: creating the database of a new run, and opening one another process created (the
daemon writes a run's first events; the run process and the webserver open it after).

    python -m itel_dagster_bench.event_log_shards [--runs 30]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from sqlalchemy import create_engine

from itel_dagster.storage.pooled_sqlite_event_log import PooledSqliteEventLogStorage


def _per_run_ms(storage, shards: list[str]) -> float:
    began = time.process_time()
    for shard in shards:
        with storage.run_connection(shard):
            pass
    return (time.process_time() - began) / len(shards) * 1000


def _dagsters_init_ms(base_dir: str, shards: list[str]) -> float:
    """Dagster's `_initdb` on each shard's engine, as the default storage runs it per process."""
    storage = SqliteEventLogStorage(base_dir)
    began = time.process_time()
    for shard in shards:
        engine = create_engine(storage.conn_string_for_shard(shard))
        storage._initdb(engine)
        engine.dispose()
    return (time.process_time() - began) / len(shards) * 1000


def measure(runs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        ours, theirs = str(Path(scratch) / "pooled"), str(Path(scratch) / "default")
        new = [uuid.uuid4().hex for _ in range(runs)]
        writer = PooledSqliteEventLogStorage(ours)
        _per_run_ms(writer, [uuid.uuid4().hex])  # the template, once per process
        figures = {"pooled_new_ms": _per_run_ms(writer, new),
                   "pooled_existing_ms": _per_run_ms(PooledSqliteEventLogStorage(ours), new),
                   "dagster_init_new_ms": _dagsters_init_ms(theirs, new),
                   "dagster_init_existing_ms": _dagsters_init_ms(theirs, new)}
    return {name: round(value, 1) for name, value in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    for name, value in measure(args.runs).items():
        print(f"{name}: {value} ms of CPU per run database")


if __name__ == "__main__":
    main()
