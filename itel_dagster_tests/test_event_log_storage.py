"""PooledSqliteEventLogStorage: every event read back, connections bounded and closed, and a live
watch that sees another process's writes while that process still holds its connection."""


import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from itel_dagster.settings.paths import PROJECT_ROOT
from itel_dagster.storage.pooled_sqlite_event_log import PooledSqliteEventLogStorage

STORAGE = {"module": "itel_dagster.storage.pooled_sqlite_event_log",
           "class": "PooledSqliteEventLogStorage"}


@dg.op
def count_to_three(context: dg.OpExecutionContext) -> int:
    for n in range(3):
        context.log.info(f"count {n}")
    return 3


@dg.job
def counting_job():
    count_to_three()


def pooled_instance(base_dir: Path, max_open: int):
    return dg.instance_for_test(overrides={"event_log_storage": {
        **STORAGE, "config": {"base_dir": str(base_dir), "max_open_databases": max_open}}})


@pytest.mark.slow  # writes many runs through Dagster's storage
def test_runs_read_back_whole_and_open_databases_stay_bounded(tmp_path):
    with pooled_instance(tmp_path / "runs", max_open=3) as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, PooledSqliteEventLogStorage)
        run_ids = [counting_job.execute_in_process(instance=instance).run_id for _ in range(6)]

        for run_id in run_ids:
            kinds = [e.dagster_event.event_type_value for e in instance.all_logs(run_id)
                     if e.is_dagster_event]
            assert "PIPELINE_START" in kinds
            assert kinds[-1] == "PIPELINE_SUCCESS"
            messages = [e.user_message for e in instance.all_logs(run_id)]
            assert [m for m in messages if m.startswith("count ")] == ["count 0", "count 1",
                                                                          "count 2"]
        assert len(storage.open_databases) <= 3
        assert storage.open_databases[-1] in (run_ids[-1], "index")


def test_deleting_a_run_closes_its_database(tmp_path):
    with pooled_instance(tmp_path / "runs", max_open=8) as instance:
        run_id = counting_job.execute_in_process(instance=instance).run_id
        assert run_id in instance.event_log_storage.open_databases
        instance.delete_run(run_id)
        assert run_id not in instance.event_log_storage.open_databases
        assert instance.all_logs(run_id) == []


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData
    from dagster._core.events.log import EventLogEntry
    from itel_dagster.storage.pooled_sqlite_event_log import PooledSqliteEventLogStorage

    base_dir, run_id, release = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    storage = PooledSqliteEventLogStorage(base_dir)
    for n in range(10):
        storage.store_event(EventLogEntry(
            error_info=None, level=20, user_message=f"event {n}", run_id=run_id,
            timestamp=time.time(), job_name="job",
            dagster_event=DagsterEvent(DagsterEventType.ENGINE_EVENT.value, "job",
                                       event_specific_data=EngineEventData())))
        time.sleep(0.05)
    deadline = time.monotonic() + 60
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # keeps its connection open: the writes may still be in the -wal file
""")


@pytest.mark.slow
def test_a_live_watch_sees_writes_of_a_process_that_keeps_its_connection(tmp_path):
    base_dir, run_id, release = tmp_path / "runs", "f" * 36, tmp_path / "release"
    reader = PooledSqliteEventLogStorage(str(base_dir))
    seen: list[str] = []
    all_seen = threading.Event()

    def on_event(entry, _cursor):
        seen.append(entry.user_message)
        if len(seen) == 10:
            all_seen.set()

    reader.watch(run_id, None, on_event)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(base_dir), run_id, str(release)])
    try:
        assert all_seen.wait(30), f"the watch saw {seen} only"
        assert writer.poll() is None, "the writer must still hold its connection"
        assert seen == [f"event {n}" for n in range(10)]
    finally:
        release.touch()
        writer.wait(30)
        reader.dispose()


def test_the_local_stack_uses_it(tmp_path, monkeypatch):
    (tmp_path / "dagster.yaml").write_text((PROJECT_ROOT / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    assert yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())["event_log_storage"] == STORAGE
    with dg.DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, PooledSqliteEventLogStorage)
        assert Path(storage._base_dir) == tmp_path / "history" / "runs"


def _schema(path: Path) -> tuple:
    """A SQLite file's tables and indexes, alembic stamp and journal mode."""
    with sqlite3.connect(path) as db:
        objects = sorted(db.execute("SELECT type, name, sql FROM sqlite_master").fetchall(),
                         key=lambda row: (row[0], row[1]))
        stamp = db.execute("SELECT version_num FROM alembic_version").fetchall()
        journal = db.execute("PRAGMA journal_mode").fetchone()
    return objects, stamp, journal


def _events(storage, run_id: str) -> list[str]:
    return [e.user_message for e in storage.get_logs_for_run(run_id)]


def _store(storage, run_id: str, message: str) -> None:
    from dagster._core.events.log import EventLogEntry

    storage.store_event(EventLogEntry(error_info=None, level=20, user_message=message,
                                      run_id=run_id, timestamp=time.time(), job_name="job"))


def test_a_new_run_database_is_the_one_dagsters_own_init_makes(tmp_path):
    """Copied from a template made once per process: same tables, indexes, alembic stamp and
    WAL mode as Dagster's default storage makes for each run."""
    ours, theirs = PooledSqliteEventLogStorage(str(tmp_path / "ours")), \
        SqliteEventLogStorage(str(tmp_path / "theirs"))
    for storage in (ours, theirs):
        _store(storage, "a" * 36, "first")
        _store(storage, "b" * 36, "second")
    ours.dispose()
    theirs.dispose()

    for run_id in ("a" * 36, "b" * 36):
        assert _schema(tmp_path / "ours" / f"{run_id}.db") == \
            _schema(tmp_path / "theirs" / f"{run_id}.db")
    assert _events(PooledSqliteEventLogStorage(str(tmp_path / "ours")), "b" * 36) == ["second"]
    assert not list((tmp_path / "ours").glob("*.tmp"))  # the scratch copies are gone


def test_a_run_database_another_process_left_empty_gets_dagsters_init(tmp_path):
    """A file that exists without the template's stamp (another process is creating it the
    default way, or it is older) is initialized by Dagster's _initdb, not overwritten."""
    base_dir = tmp_path / "runs"
    base_dir.mkdir()
    (base_dir / f"{'c' * 36}.db").touch()
    storage = PooledSqliteEventLogStorage(str(base_dir))

    _store(storage, "c" * 36, "into the empty file")

    assert _events(storage, "c" * 36) == ["into the empty file"]
    storage.dispose()
    assert _schema(base_dir / f"{'c' * 36}.db")[1] == \
        _schema(base_dir / "index.db")[1]  # stamped at the same revision


def test_storages_creating_the_same_run_database_at_once_share_one_file(tmp_path):
    base_dir = str(tmp_path / "runs")
    storages = [PooledSqliteEventLogStorage(base_dir) for _ in range(4)]
    start = threading.Barrier(len(storages))

    def write(n: int) -> None:
        start.wait()
        _store(storages[n], "d" * 36, f"from storage {n}")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(len(storages))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(_events(storages[0], "d" * 36)) == [f"from storage {n}" for n in range(4)]
    for storage in storages:
        storage.dispose()


def test_new_run_databases_skip_dagsters_per_run_init(tmp_path, monkeypatch):
    """Dagster's _initdb runs for the index and once for the template, not once per run."""
    calls: list[str] = []
    original = SqliteEventLogStorage._initdb

    def counted(storage, engine, for_index_shard=False):
        calls.append(str(engine.url))
        return original(storage, engine, for_index_shard=for_index_shard)

    monkeypatch.setattr(SqliteEventLogStorage, "_initdb", counted)
    monkeypatch.setattr("itel_dagster.storage.pooled_sqlite_event_log._template", None)
    storage = PooledSqliteEventLogStorage(str(tmp_path / "runs"))
    for n in range(5):
        _store(storage, f"{n:036d}", "event")
    storage.dispose()

    run_inits = [url for url in calls if str(tmp_path / "runs") in url and "index" not in url]
    assert run_inits == []
    assert sum(url.endswith("/template.db") for url in calls) == 1
