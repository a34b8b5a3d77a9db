"""WarmForkRunLauncher on a real Dagster instance: runs are real processes forked from one warm
process, see code changes at once, can be terminated, and a dead run worker is reported failed."""

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.reconstruct import ReconstructableJob
from dagster._core.errors import DagsterLaunchFailedError
from dagster._core.launcher.base import WorkerStatus

from itel_dagster.launchers.warm_fork_run_launcher import RUN_PID_TAG, RUN_PROCESS_TAG, process_state
from itel_dagster.metrics.process_stat import start_ticks, stat_fields

pytestmark = pytest.mark.slow  # starts fork servers and run processes

LAUNCHER = "itel_dagster.launchers.warm_fork_run_launcher"

JOBS = '''
import os, time
import dagster as dg

VERSION = "{version}"

@dg.op(config_schema={{"out": str}})
def where(context):
    with open(context.op_config["out"], "w") as out:
        out.write(f"{{os.getpid()}} {{os.getppid()}} {{VERSION}}")

@dg.job(executor_def=dg.in_process_executor)
def where_job():
    where()

@dg.op(config_schema={{"started": str}})
def wait_long(context):
    open(context.op_config["started"], "w").close()
    for _ in range(1200):
        time.sleep(0.1)

@dg.job(executor_def=dg.in_process_executor)
def long_job():
    wait_long()

@dg.op(config_schema={{"started": str}})
def die(context):
    open(context.op_config["started"], "w").close()
    time.sleep(0.5)
    os._exit(3)

@dg.job(executor_def=dg.in_process_executor)
def dying_job():
    die()

@dg.op(config_schema={{"out": str}})
def env_of_run(context):
    with open(context.op_config["out"], "w") as out:
        out.write(os.environ.get("ITEL_TEST_RUN_ENV", "unset"))

@dg.job(executor_def=dg.in_process_executor)
def env_job():
    env_of_run()
'''


def write_jobs(path: Path, version: str) -> Path:
    path.write_text(JOBS.format(version=version))
    return path


def launcher_instance(preload=None, spare_imports=None, env=None, run_monitoring=None):
    config = {} if preload is None else {"preload_modules": preload}
    if spare_imports is not None:
        config["spare_imports"] = spare_imports
    if env is not None:
        config["env"] = env
    overrides = {"run_launcher": {"module": LAUNCHER, "class": "WarmForkRunLauncher", "config": config}}
    if run_monitoring is not None:
        overrides["run_monitoring"] = run_monitoring
    return dg.instance_for_test(overrides=overrides)


def launch(instance: dg.DagsterInstance, jobs_file: Path, job_name: str, op: str,
           config: dict) -> str:
    recon = ReconstructableJob.for_file(str(jobs_file), job_name)
    run = instance.create_run_for_job(
        recon.get_definition(), run_config={"ops": {op: {"config": config}}},
        job_code_origin=recon.get_python_origin())
    instance.launch_run(run.run_id, workspace=None)
    return run.run_id


def wait_for(predicate, timeout: float = 90.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return value


def finished(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun:
    return wait_for(lambda: (r := instance.get_run_by_id(run_id)) and r.is_finished and r,
                    what=f"run {run_id} to finish")


def warm_pids(instance: dg.DagsterInstance) -> list[int]:
    return [s.process.pid for s in instance.run_launcher._servers.values() if s.alive()]


def test_runs_are_forks_of_one_warm_process_and_see_code_changes(tmp_path):
    jobs = write_jobs(tmp_path / "jobs.py", "v1")
    with launcher_instance() as instance:
        first = launch(instance, jobs, "where_job", "where", {"out": str(tmp_path / "first")})
        assert finished(instance, first).status == dg.DagsterRunStatus.SUCCESS
        (server,) = warm_pids(instance)

        write_jobs(jobs, "v2")  # edited while the warm process lives: the next run sees it
        second = launch(instance, jobs, "where_job", "where", {"out": str(tmp_path / "second")})
        assert finished(instance, second).status == dg.DagsterRunStatus.SUCCESS
        assert warm_pids(instance) == [server]

        for run_id, name, version in ((first, "first", "v1"), (second, "second", "v2")):
            pid, parent, seen = (tmp_path / name).read_text().split()
            assert int(parent) == server  # forked from the warm process, not a fresh one
            assert instance.get_run_by_id(run_id).tags[RUN_PID_TAG] == pid
            assert seen == version
        assert (tmp_path / "first").read_text().split()[0] != (tmp_path / "second").read_text().split()[0]
        events = [e.message for e in instance.all_logs(second) if e.message]
        assert any(f"run worker (pid: {pid})" in m for m in events)


SPARE_MARKER = '''
import os, pathlib
pathlib.Path(os.environ["SPARE_MARKS"], str(os.getpid())).touch()
'''


def spare_marks(directory: Path) -> set[int]:
    return {int(p.name) for p in directory.iterdir()}


def spare_marking(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """(jobs file, marks dir): spares that import spare_marker leave their pid in marks."""
    jobs = write_jobs(tmp_path / "jobs.py", "v1")
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "spare_marker.py").write_text(SPARE_MARKER)
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "modules"))
    monkeypatch.setenv("SPARE_MARKS", str(marks))
    return jobs, marks


def test_a_run_starts_in_a_spare_that_imported_ahead(tmp_path, monkeypatch):
    jobs, marks = spare_marking(tmp_path, monkeypatch)
    with launcher_instance(spare_imports=["spare_marker"]) as instance:
        first = launch(instance, jobs, "where_job", "where", {"out": str(tmp_path / "first")})
        assert finished(instance, first).status == dg.DagsterRunStatus.SUCCESS
        first_pid = int(instance.get_run_by_id(first).tags[RUN_PID_TAG])
        assert first_pid in spare_marks(marks)  # its process imported the module before the run
        # The next spare is forked and imports while no run needs it.
        (waiting,) = wait_for(lambda: spare_marks(marks) - {first_pid}, what="the next spare")

        second = launch(instance, jobs, "where_job", "where", {"out": str(tmp_path / "second")})
        assert finished(instance, second).status == dg.DagsterRunStatus.SUCCESS
        assert int(instance.get_run_by_id(second).tags[RUN_PID_TAG]) == waiting
        pid, parent, version = (tmp_path / "second").read_text().split()
        assert (int(pid), int(parent), version) == (waiting, warm_pids(instance)[0], "v1")
        events = [e.message for e in instance.all_logs(second) if e.message]
        assert any(f"spare run worker (pid: {waiting})" in m for m in events)


def test_a_run_still_starts_when_its_spare_died(tmp_path, monkeypatch):
    jobs, marks = spare_marking(tmp_path, monkeypatch)
    with launcher_instance(spare_imports=["spare_marker"]) as instance:
        first = launch(instance, jobs, "where_job", "where", {"out": str(tmp_path / "first")})
        finished(instance, first)
        first_pid = int(instance.get_run_by_id(first).tags[RUN_PID_TAG])
        (spare,) = wait_for(lambda: spare_marks(marks) - {first_pid}, what="the next spare")
        os.kill(spare, signal.SIGKILL)
        wait_for(lambda: process_state(spare) in (None, "Z"), what="the spare to die")

        second = launch(instance, jobs, "where_job", "where", {"out": str(tmp_path / "second")})
        assert finished(instance, second).status == dg.DagsterRunStatus.SUCCESS
        pid = int(instance.get_run_by_id(second).tags[RUN_PID_TAG])
        assert pid != spare
        events = [e.message for e in instance.all_logs(second) if e.message]
        assert any(f"Forked run worker (pid: {pid})" in m for m in events)
        # and a new spare waits for the next run
        wait_for(lambda: spare_marks(marks) - {first_pid, spare}, what="a new spare")


def test_terminate_cancels_a_running_run(tmp_path):
    jobs = write_jobs(tmp_path / "jobs.py", "v1")
    started = tmp_path / "started"
    with launcher_instance() as instance:
        run_id = launch(instance, jobs, "long_job", "wait_long", {"started": str(started)})
        wait_for(started.exists, what="the op to start")
        pid = int(instance.get_run_by_id(run_id).tags[RUN_PID_TAG])
        assert instance.run_launcher.check_run_worker_health(
            instance.get_run_by_id(run_id)).status == WorkerStatus.RUNNING

        assert instance.run_launcher.terminate(run_id)
        assert finished(instance, run_id).status == dg.DagsterRunStatus.CANCELED
        wait_for(lambda: process_state(pid) is None, what="the run process to be reaped")
        assert not instance.run_launcher.terminate(run_id)  # finished: nothing to do


def test_a_dead_run_worker_is_reported_failed(tmp_path):
    """What run monitoring asks: the process died in the middle of the run (no status written)."""
    jobs = write_jobs(tmp_path / "jobs.py", "v1")
    started = tmp_path / "started"
    with launcher_instance() as instance:
        run_id = launch(instance, jobs, "dying_job", "die", {"started": str(started)})
        wait_for(started.exists, what="the op to start")
        pid = int(instance.get_run_by_id(run_id).tags[RUN_PID_TAG])
        wait_for(lambda: process_state(pid) is None, what="the run process to die and be reaped")

        run = instance.get_run_by_id(run_id)
        assert run.status == dg.DagsterRunStatus.STARTED  # nobody else noticed
        health = instance.run_launcher.check_run_worker_health(run)
        assert health.status == WorkerStatus.FAILED
        assert str(pid) in health.msg


def test_the_warm_process_is_started_again_after_it_died(tmp_path):
    jobs = write_jobs(tmp_path / "jobs.py", "v1")
    with launcher_instance() as instance:
        first = launch(instance, jobs, "where_job", "where", {"out": str(tmp_path / "first")})
        finished(instance, first)
        (server,) = warm_pids(instance)
        os.kill(server, signal.SIGKILL)
        wait_for(lambda: not warm_pids(instance), what="the warm process to die")

        second = launch(instance, jobs, "where_job", "where", {"out": str(tmp_path / "second")})
        assert finished(instance, second).status == dg.DagsterRunStatus.SUCCESS
        (replacement,) = warm_pids(instance)
        assert replacement != server
        assert int((tmp_path / "second").read_text().split()[1]) == replacement


def test_preloading_a_module_that_starts_threads_is_refused(tmp_path):
    """Forking a process with threads can deadlock the child: the launch fails with the reason."""
    jobs = write_jobs(tmp_path / "jobs.py", "v1")
    with launcher_instance(preload=["dagster", "polars"]) as instance:
        with pytest.raises(DagsterLaunchFailedError, match="threads"):
            launch(instance, jobs, "where_job", "where", {"out": str(tmp_path / "out")})


def test_the_launcher_env_reaches_every_run(tmp_path, monkeypatch):
    jobs = write_jobs(tmp_path / "jobs.py", "v1")
    monkeypatch.setenv("ITEL_TEST_RUN_ENV", "from the daemon")
    with launcher_instance(env={"ITEL_TEST_RUN_ENV": "from dagster.yaml"}) as instance:
        for name in ("first", "second"):  # the first spare and the one forked after it
            run_id = launch(instance, jobs, "env_job", "env_of_run", {"out": str(tmp_path / name)})
            assert finished(instance, run_id).status == dg.DagsterRunStatus.SUCCESS
            assert (tmp_path / name).read_text() == "from dagster.yaml"


def started_run(instance: dg.DagsterInstance, jobs: Path, started: Path) -> tuple[str, int]:
    """(run id, pid) of a long run whose op has begun."""
    run_id = launch(instance, jobs, "long_job", "wait_long", {"started": str(started)})
    wait_for(started.exists, what="the op to start")
    return run_id, int(instance.get_run_by_id(run_id).tags[RUN_PID_TAG])


def test_a_live_run_is_running_by_its_identity_and_dead_once_killed(tmp_path):
    """The tag names the process by pid and start time; SIGKILL mid-run makes it dead."""
    jobs = write_jobs(tmp_path / "jobs.py", "v1")
    with launcher_instance() as instance:
        run_id, pid = started_run(instance, jobs, tmp_path / "started")
        run = instance.get_run_by_id(run_id)
        assert run.tags[RUN_PROCESS_TAG] == f"{pid}:{start_ticks(stat_fields(pid))}"
        health = instance.run_launcher.check_run_worker_health(run)
        assert (health.status, health.run_worker_id) == (WorkerStatus.RUNNING, str(pid))

        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: process_state(pid) in (None, "Z"), what="the run process to die")
        run = instance.get_run_by_id(run_id)
        assert run.status == dg.DagsterRunStatus.STARTED  # nobody else noticed
        health = instance.run_launcher.check_run_worker_health(run)
        assert health.status == WorkerStatus.FAILED
        assert f"process {pid}" in health.msg


def test_a_reused_pid_is_reported_dead_and_never_signalled(tmp_path):
    """The run's process is gone and the kernel gave its pid to an unrelated process: that one
    lives, but it is not the run's (another start time)."""
    jobs = write_jobs(tmp_path / "jobs.py", "v1")
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        started = start_ticks(stat_fields(unrelated.pid))
        with launcher_instance() as instance:
            recon = ReconstructableJob.for_file(str(jobs), "long_job")
            run = instance.create_run_for_job(
                recon.get_definition(), job_code_origin=recon.get_python_origin(),
                run_config={"ops": {"wait_long": {"config": {"started": str(tmp_path / "s")}}}},
                tags={RUN_PID_TAG: str(unrelated.pid),
                      RUN_PROCESS_TAG: f"{unrelated.pid}:{started - 1}"})

            health = instance.run_launcher.check_run_worker_health(run)
            assert health.status == WorkerStatus.NOT_FOUND
            assert f"pid {unrelated.pid} now belongs to another process" in health.msg
            assert not instance.run_launcher.terminate(run.run_id)
            time.sleep(0.2)
            assert unrelated.poll() is None  # not interrupted
    finally:
        unrelated.kill()
        unrelated.wait()


def test_a_run_not_yet_tagged_is_never_reported_dead(tmp_path):
    """Run monitoring fails a STARTED run on UNKNOWN as on FAILED: a run whose process is not
    tagged yet (its launch still writing it) is RUNNING while Dagster's start window lasts."""
    jobs = write_jobs(tmp_path / "jobs.py", "v1")
    with launcher_instance(run_monitoring={"start_timeout_seconds": 2}) as instance:
        recon = ReconstructableJob.for_file(str(jobs), "where_job")
        run = instance.create_run_for_job(
            recon.get_definition(), job_code_origin=recon.get_python_origin(),
            run_config={"ops": {"where": {"config": {"out": str(tmp_path / "out")}}}})
        health = instance.run_launcher.check_run_worker_health(run)
        assert health.status == WorkerStatus.RUNNING
        assert "not yet known" in health.msg

        # Past the window nothing says it was ever ours: Dagster's own verdict (UNKNOWN).
        wait_for(lambda: instance.run_launcher.check_run_worker_health(run).status
                 == WorkerStatus.UNKNOWN, timeout=10, what="the start window to pass")


def test_a_run_process_waits_until_its_tag_names_it(tmp_path, monkeypatch):
    """Until the launch has tagged the run with its process (a daemon that hangs or dies right
    after the fork), that process runs nothing: no live run ever lacks the tag that health and
    termination go by."""
    jobs = write_jobs(tmp_path / "jobs.py", "v1")
    started = tmp_path / "started"
    with launcher_instance(spare_imports=[]) as instance:
        tagging, go_on = threading.Event(), threading.Event()
        add_run_tags = instance.add_run_tags

        def hanging_tagger(run_id, tags):
            tagging.set()
            go_on.wait(60)
            add_run_tags(run_id, tags)

        monkeypatch.setattr(instance, "add_run_tags", hanging_tagger)
        launched = []
        launcher = threading.Thread(target=lambda: launched.append(
            launch(instance, jobs, "long_job", "wait_long", {"started": str(started)})))
        launcher.start()
        try:
            wait_for(tagging.is_set, what="the launch to tag the run")
            time.sleep(4.0)  # a forked run reaches its op in 1-2 s
            assert not started.exists()
        finally:
            go_on.set()
            launcher.join(60)
        wait_for(started.exists, what="the op to start once tagged")
        run = instance.get_run_by_id(launched[0])
        pid = int(run.tags[RUN_PID_TAG])
        assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        os.kill(pid, signal.SIGKILL)
