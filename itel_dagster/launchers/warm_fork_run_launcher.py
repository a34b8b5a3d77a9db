"""WarmForkRunLauncher: Dagster's run launcher for one machine, starting each run as a fork of a
warm process (launchers/run_fork_server.py) instead of a fresh interpreter.

Why: the default launcher asks the code server for a new `spawn` process per run, which imports
dagster and everything again and blocks the run queue while it does (5-7 s per run on 2 cores,
one launch at a time). Micro-batches of a few hundred records then spend most of their life
starting. Forked from a process that already imported dagster, a run reaches its first op in
about a second.

Each run is still its own process with its own memory, executed by Dagster's own
`execute_run_command`, exactly as `dagster api execute_run` does. The run's process identity, its
pid plus its start time, goes into its tags (`itel/run_process` = "pid:starttime"; `itel/run_pid`
keeps the bare pid for the bench): termination sends that process SIGINT (Dagster cancels the
run), and run monitoring asks check_run_worker_health whether it still lives, so a run whose
process died is marked failed and retried instead of staying STARTED forever. A pid the kernel
gave to another process is never taken for the run (never signalled, never reported alive), and
a run whose identity is not yet tagged is never reported dead while it may live.

Configure in dagster.yaml:

    run_launcher:
      module: itel_dagster.launchers.warm_fork_run_launcher
      class: WarmForkRunLauncher
      config: {}   # preload_modules: [...] replaces DEFAULT_PRELOAD

Only modules that start no threads may be preloaded (the fork server checks and refuses).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster._core.errors import DagsterLaunchFailedError
from dagster._core.launcher.base import (
    CheckRunHealthResult,
    LaunchRunContext,
    RunLauncher,
    WorkerStatus,
)
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, serialize_value
from dagster._serdes.config_class import ConfigurableClassData

from itel_dagster.dagster_seam import RUN_WORKER_DAGSTER_MODULES
from itel_dagster.metrics.process_stat import start_ticks, stat_fields

RUN_PID_TAG = "itel/run_pid"
RUN_PROCESS_TAG = "itel/run_process"  # "pid:starttime" (clock ticks after boot, /proc stat)
# What a run worker imports before its first op, minus what starts threads (polars, pyarrow,
# deltalake) and the project's own code (imported fresh by each run). Dagster's storage layer
# (sqlalchemy, alembic) is half of it: a run creates its instance from a ref before anything else.
DEFAULT_PRELOAD = [
    "dagster",
    *RUN_WORKER_DAGSTER_MODULES,
    "sqlalchemy",
    "alembic",
    "upath",
    "confluent_kafka",
    "httpx",
    "orjson",
    "pydantic",
    "yaml",
]
# What a spare run process imports ahead, while no run waits for it: the libraries that start
# threads at import (so the warm process cannot), about 0.3 s of every run's start otherwise.
DEFAULT_SPARE_IMPORTS = ["polars", "pyarrow", "deltalake"]
SERVER_MODULE = "itel_dagster.launchers.run_fork_server"


class ForkServerError(RuntimeError):
    pass


class ForkServer:
    """One run_fork_server process for one Python executable, spoken to over its stdin/stdout."""

    def __init__(self, executable: str, preload: list[str], start_timeout: float,
                 spare_imports: list[str] | None = None, env: Mapping[str, str] | None = None):
        self.executable = executable
        self.preload = preload
        self.spare_imports = list(spare_imports or [])
        self.env = dict(env or {})
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self._pending = b""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        command = [self.executable, "-m", SERVER_MODULE]
        for module in self.preload:
            command += ["--preload", module]
        for module in self.spare_imports:
            command += ["--spare-import", module]
        # stderr is inherited: the runs' output lands where the daemon's does.
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=None, bufsize=0, env={**os.environ, **self.env})
        self._pending = b""
        hello = self._read_reply(self.start_timeout)
        if not hello.get("ready"):
            self.stop()
            raise ForkServerError(f"the run fork server did not start: {hello.get('error', hello)}")

    def reserve(self, execute_run_args: str, timeout: float) -> tuple[int, bool]:
        """(pid of the process that will run it once released, whether it is a spare that had
        imported ahead)."""
        reply = self._request({"execute_run_args": execute_run_args}, timeout)
        if "pid" not in reply:
            raise ForkServerError(f"the run fork server refused the run: {reply.get('error', reply)}")
        return int(reply["pid"]), bool(reply.get("spare"))

    def release(self, go: bool, timeout: float) -> bool:
        """Lets the reserved process run (go) or exit; False when it died before its run."""
        return bool(self._request({"go": go}, timeout).get("started"))

    def _request(self, message: dict, timeout: float) -> dict:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        return self._read_reply(timeout)

    def _read_reply(self, timeout: float) -> dict:
        assert self.process is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ForkServerError(f"no answer from the run fork server within {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    code = self.process.poll()
                    raise ForkServerError(f"the run fork server exited (code {code})")
                self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return json.loads(line)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.stdin is not None:
            self.process.stdin.close()  # the server exits at end of input; its runs go on
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def process_state(pid: int) -> str | None:
    """'R', 'S', 'Z', ... from /proc, or None when no such process exists."""
    fields = stat_fields(pid)
    return fields[0] if fields else None


def process_identity(pid: int) -> str | None:
    """"pid:starttime" of a process, or None when it is gone."""
    fields = stat_fields(pid)
    return f"{pid}:{start_ticks(fields)}" if fields else None


def worker_death(identity: str) -> tuple[WorkerStatus, str] | None:
    """None while the process `identity` names lives; else how run monitoring should see it
    (FAILED: it exited; NOT_FOUND: its pid now belongs to another process) and why."""
    pid, _, started = identity.partition(":")
    fields = stat_fields(int(pid))
    if fields is None:
        return WorkerStatus.FAILED, f"run worker process {pid} is gone"
    if fields[0] in ("Z", "X"):
        return WorkerStatus.FAILED, f"run worker process {pid} has exited (state {fields[0]})"
    if started and str(start_ticks(fields)) != started:
        return WorkerStatus.NOT_FOUND, (
            f"run worker process {pid} is gone: pid {pid} now belongs to another process "
            f"(started at tick {start_ticks(fields)}, the run's at {started})")
    return None


class WarmForkRunLauncher(RunLauncher, ConfigurableClass):
    def __init__(self, inst_data: ConfigurableClassData | None = None,
                 preload_modules: list[str] | None = None, start_timeout_seconds: float = 120.0,
                 fork_timeout_seconds: float = 30.0, spare_imports: list[str] | None = None,
                 env: Mapping[str, str] | None = None):
        self._inst_data = inst_data
        self.preload_modules = list(DEFAULT_PRELOAD if preload_modules is None else preload_modules)
        self.spare_imports = list(DEFAULT_SPARE_IMPORTS if spare_imports is None else spare_imports)
        self.env = {name: str(value) for name, value in (env or {}).items()}
        self.start_timeout_seconds = start_timeout_seconds
        self.fork_timeout_seconds = fork_timeout_seconds
        self._servers: dict[str, ForkServer] = {}
        self._lock = threading.Lock()  # the daemon may launch from several threads
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        return {
            "preload_modules": dg.Field([str], is_required=False, description=(
                "Modules the warm process imports once; each run imports the rest itself. "
                "Only modules that start no threads.")),
            "start_timeout_seconds": dg.Field(float, is_required=False, default_value=120.0),
            "fork_timeout_seconds": dg.Field(float, is_required=False, default_value=30.0),
            "spare_imports": dg.Field([str], is_required=False, description=(
                "Modules a spare run process imports before its run arrives (default: polars, "
                "pyarrow, deltalake); [] for no spare.")),
            "env": dg.Field(dg.Permissive(), is_required=False, description=(
                "Environment variables of the warm process, so of every run (e.g. allocator "
                "settings); they override the daemon's.")),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData,
                          config_value: Mapping[str, Any]) -> WarmForkRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    # -- launching -------------------------------------------------------------------------

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        origin = run.job_code_origin
        if origin is None:
            raise DagsterLaunchFailedError(f"run {run.run_id} has no job code origin to execute")
        args = serialize_value(ExecuteRunArgs(job_origin=origin, run_id=run.run_id,
                                              instance_ref=self._instance.get_ref()))
        executable = origin.executable_path or sys.executable
        with self._lock:
            pid, spare = self._start(executable, args, run.run_id)
        message = (f"Started in a spare run worker (pid: {pid}) forked ahead from the warm run "
                   "process" if spare else
                   f"Forked run worker (pid: {pid}) from the warm run process")
        self._instance.report_engine_event(message, run, cls=self.__class__)

    def _start(self, executable: str, args: str, run_id: str) -> tuple[int, bool]:
        """Tags the run with its process before that process may run it: a launch that dies in
        between leaves a STARTING run and no process (Dagster's start timeout fails it), never
        a live run that health checks cannot name."""
        for _ in (1, 2):  # a reserved process that died meanwhile is replaced once
            server, pid, spare = self._reserve(executable, args)
            # Read before the fork server may reap it (a zombie keeps its start time).
            identity = process_identity(pid) or f"{pid}:exited"
            try:
                self._instance.add_run_tags(
                    run_id, {RUN_PID_TAG: str(pid), RUN_PROCESS_TAG: identity})
            except BaseException:
                self._release(server, executable, go=False)
                raise
            if self._release(server, executable, go=True):
                return pid, spare
        raise DagsterLaunchFailedError("the reserved run process died twice before its run")

    def _release(self, server: ForkServer, executable: str, go: bool) -> bool:
        try:
            return server.release(go, self.fork_timeout_seconds)
        except (ForkServerError, OSError) as exc:
            server.stop()
            self._servers.pop(executable, None)
            raise DagsterLaunchFailedError(str(exc)) from exc

    def _reserve(self, executable: str, args: str) -> tuple[ForkServer, int, bool]:
        server = self._servers.get(executable)
        for attempt in (1, 2):  # a server that died is started once more
            try:
                if server is None or not server.alive():
                    server = ForkServer(executable, self.preload_modules, self.start_timeout_seconds,
                                        self.spare_imports, self.env)
                    server.start()
                    self._servers[executable] = server
                return server, *server.reserve(args, self.fork_timeout_seconds)
            except (ForkServerError, OSError) as exc:
                if server is not None:
                    server.stop()
                self._servers.pop(executable, None)
                server = None
                if attempt == 2:
                    raise DagsterLaunchFailedError(str(exc)) from exc
        raise AssertionError("unreachable")

    # -- after the launch ------------------------------------------------------------------

    @staticmethod
    def _identity(run: dg.DagsterRun) -> str | None:
        """"pid:starttime", or the bare pid of a run tagged before identities were (no start
        time to check), or None when the launch has not tagged it yet."""
        return run.tags.get(RUN_PROCESS_TAG) or run.tags.get(RUN_PID_TAG) or None

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        identity = self._identity(run)
        death = worker_death(identity) if identity else (None, "none tagged yet")
        if death:  # never signal a pid that another process now holds
            self._instance.report_engine_event(
                f"No run worker process to interrupt: {death[1]}", run, cls=self.__class__)
            return False
        os.kill(int(identity.partition(":")[0]), signal.SIGINT)  # Dagster cancels the run
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        # Run monitoring (dagster 1.13) resumes or fails a STARTED run on any status but RUNNING
        # and SUCCESS, at once: UNKNOWN is as fatal as FAILED. So a run whose process is not
        # known yet is reported RUNNING, for as long as Dagster gives a run to start.
        identity = self._identity(run)
        if identity is None:
            record = self._instance.get_run_record_by_id(run.run_id)
            since = (record.start_time or record.create_timestamp.timestamp()) if record else None
            age = time.time() - since if since else 0.0
            window = self._instance.run_monitoring_start_timeout_seconds
            if age < window:
                return CheckRunHealthResult(WorkerStatus.RUNNING, (
                    f"run worker not yet known (no {RUN_PROCESS_TAG} tag {age:.0f} s after the "
                    f"run started; waiting up to {window} s)"))
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, (
                f"no {RUN_PROCESS_TAG} tag {age:.0f} s after the run started: not launched by "
                "this launcher, or the launch died before tagging it"))
        worker = identity.partition(":")[0]
        death = worker_death(identity)
        if death:
            return CheckRunHealthResult(death[0], death[1], run_worker_id=worker)
        return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=worker)

    def dispose(self) -> None:
        with self._lock:
            for server in self._servers.values():
                server.stop()
            self._servers.clear()
