"""The Dagster path under the bench: the code location's gRPC server and `dagster-daemon run`
pointed at it, with a DAGSTER_HOME of their own holding a copy of dagster.yaml, so both worker
sensors start their runs as in production; and the waits and run records the figures are taken
from.

The code server is started once, as `dagster dev` (`itel-dagster up`) and a deployment's code
servers are. A daemon given the python_module workspace would start its own and replace it with a
new process at every workspace refresh (each 60 s): a fresh import of dagster and the definitions,
about 3 s of CPU a minute (idle) that neither the local stack nor a deployment pays.

It stops only the process groups it started, and never touches var/dagster_home.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import yaml

from itel_dagster.dagster_seam import code_server_answers
from itel_dagster.devstack.kafka.broker import free_port
from itel_dagster.kafka.offsets import GroupProgressReader
from itel_dagster.launchers.warm_fork_run_launcher import RUN_PID_TAG
from itel_dagster.sensors.run_range_tags import (
    WORKER_TAG,
    TaggedRange,
    tagged_ranges,
)
from itel_dagster.settings.paths import PROJECT_ROOT
from itel_dagster.settings.workers import WorkerSettings


CODE_LOCATION = "itel_dagster"  # as workspace.yaml names it
DEFINITIONS_MODULE = "itel_dagster.definitions"
POLL_SECONDS = 0.5  # the catch-up time's resolution


class LagTimeout(RuntimeError):
    """A group did not reach the expected offsets in time: records are unaccounted for."""


@dataclass
class DagsterDaemon:
    home: Path
    env: dict[str, str]
    dagster_yaml: Path
    log_file: Path
    process: subprocess.Popen | None = None
    code_server: subprocess.Popen | None = None
    started_at: float = 0.0  # time.time() of the code server's spawn
    code_server_start_timeout: float = 180.0
    definitions_module: str = DEFINITIONS_MODULE

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.dagster_yaml, self.home / "dagster.yaml")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.started_at = time.time()
        port = free_port()
        self.code_server = self._spawn(
            [sys.executable, "-m", "dagster", "api", "grpc", "--host", "127.0.0.1", "--port",
             str(port), "--location-name", CODE_LOCATION, "-m", self.definitions_module,
             "-d", str(PROJECT_ROOT)])
        self._wait_for_code_server(port)
        workspace = self.home / "workspace.yaml"
        workspace.write_text(yaml.safe_dump({"load_from": [{"grpc_server": {
            "host": "127.0.0.1", "port": port, "location_name": CODE_LOCATION}}]}))
        self._start_daemon()

    def _start_daemon(self) -> None:
        self.process = self._spawn([str(Path(sys.executable).parent / "dagster-daemon"), "run",
                                    "-w", str(self.home / "workspace.yaml")])

    def kill_and_restart_daemon(self) -> None:
        """SIGKILL the daemon's process group (its fork server and run processes die with it) and
        start `dagster-daemon run` again on the same code server, as a supervisor would."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._start_daemon()

    def _spawn(self, command: list[str]) -> subprocess.Popen:
        with open(self.log_file, "ab") as log:
            return subprocess.Popen(
                command, env={**os.environ, **self.env, "DAGSTER_HOME": str(self.home)},
                cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)

    def _wait_for_code_server(self, port: int) -> None:
        """Until it answers: a daemon that found it down would wait for its next refresh (60 s)."""
        deadline = time.monotonic() + self.code_server_start_timeout
        while not code_server_answers(port):
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the code server did not answer on port {port} within "
                                   f"{self.code_server_start_timeout:.0f} s; see {self.log_file}")
            time.sleep(0.2)

    def check_alive(self) -> None:
        for name, process in (("dagster-daemon", self.process),
                              ("the code server", self.code_server)):
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; "
                                   f"see {self.log_file}")

    def instance(self) -> dg.DagsterInstance:
        # dagster.yaml's event log storage finds its directory through DAGSTER_HOME.
        before = os.environ.get("DAGSTER_HOME")
        os.environ["DAGSTER_HOME"] = str(self.home)
        try:
            instance = dg.DagsterInstance.from_config(str(self.home))
            instance.event_log_storage  # noqa: B018 - built now, while DAGSTER_HOME is set
            return instance
        finally:
            if before is None:
                del os.environ["DAGSTER_HOME"]
            else:
                os.environ["DAGSTER_HOME"] = before

    def stop(self) -> None:
        """SIGTERM to the daemon's process group (its run processes) and then to the code
        server's, KILL for what is still there after 30 s."""
        for process in (self.process, self.code_server):
            if process is None or process.poll() is not None:
                continue
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wait_until_caught_up(bootstrap: str, workers: list[WorkerSettings], targets: dict[int, int],
                         timeout: float, on_progress=lambda done: None,
                         check=lambda: None, on_reached=lambda worker: None) -> dict[str, float]:
    """Poll both groups until each committed `targets` (partition -> offset) on every partition;
    worker -> time.time() it got there. on_progress(records committed so far, both groups);
    on_reached(worker name) as soon as that worker's group got there."""
    reached: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    # One kept consumer per group: the observer must not load the broker it measures.
    readers = {w.name: GroupProgressReader(bootstrap, w.consumer_group) for w in workers}
    try:
        while True:
            done = 0
            for worker in workers:
                progress = readers[worker.name].read(worker.input_topic)
                committed = {p.partition: p.committed or 0 for p in progress}
                done += sum(min(committed.get(p, 0), end) for p, end in targets.items())
                if worker.name not in reached and all(committed.get(p, 0) >= end
                                                      for p, end in targets.items()):
                    reached[worker.name] = time.time()
                    on_reached(worker.name)
            on_progress(done)
            if len(reached) == len(workers):
                return reached
            check()
            if time.monotonic() > deadline:
                missing = [w.name for w in workers if w.name not in reached]
                raise LagTimeout(f"{', '.join(missing)} did not commit {targets} "
                                 f"within {timeout:.0f} s")
            time.sleep(POLL_SECONDS)
    finally:
        for reader in readers.values():
            reader.close()


@dataclass(frozen=True)
class RunFacts:
    run_id: str
    worker: str
    ranges: tuple[TaggedRange, ...]
    status: str
    created_at: float
    started_at: float | None
    ended_at: float | None
    pid: int | None = None  # the run process (WarmForkRunLauncher's itel/run_pid tag)

    @property
    def records(self) -> int:
        return sum(r.size for r in self.ranges)

    def covers(self, partition: int, offset: int) -> bool:
        return any(r.partition == partition and r.start <= offset < r.end for r in self.ranges)

    @property
    def seconds(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at


def run_facts(instance: dg.DagsterInstance, worker: str) -> list[RunFacts]:
    facts = []
    for record in instance.get_run_records(filters=dg.RunsFilter(tags={WORKER_TAG: worker})):
        tags = record.dagster_run.tags
        ranges = tuple(tagged_ranges(tags))
        if not ranges:
            continue
        facts.append(RunFacts(
            run_id=record.dagster_run.run_id, worker=worker, ranges=ranges,
            status=record.dagster_run.status.value,
            created_at=record.create_timestamp.timestamp(),
            started_at=record.start_time, ended_at=record.end_time,
            pid=int(tags[RUN_PID_TAG]) if tags.get(RUN_PID_TAG) else None))
    return facts


def between_runs(runs: list[RunFacts]) -> dict[str, float | None]:
    """Medians over a worker's consecutive runs (one lane: one after the other): seconds from a
    run's end to the sensor's request of the next, and from that request to the next run's start
    (the queue and the launch). None with fewer than two finished runs."""
    ordered = sorted((r for r in runs if r.started_at is not None and r.ended_at is not None),
                     key=lambda r: r.created_at)
    pairs = list(zip(ordered, ordered[1:]))
    to_request = [following.created_at - previous.ended_at for previous, following in pairs]
    to_start = [following.started_at - following.created_at for _, following in pairs]
    return {
        "end_to_next_request_median_seconds":
            round(statistics.median(to_request), 3) if to_request else None,
        "request_to_start_median_seconds":
            round(statistics.median(to_start), 3) if to_start else None,
    }
