"""PooledSqliteEventLogStorage: every event read back, connections bounded and closed, and a live
watch that sees another process's writes while that process still holds its connection."""


import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

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
