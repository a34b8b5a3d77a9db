"""The Dagster path under the bench: `dagster-daemon run` on the repository's workspace, with a
DAGSTER_HOME of its own holding a copy of dagster.yaml, so both worker sensors start their runs
as in production; and the waits and run records the figures are taken from.

It stops only the process group it started, and never touches var/dagster_home.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from itel_dagster.kafka.offsets import group_progress
from itel_dagster.launchers.warm_fork_run_launcher import RUN_PID_TAG
from itel_dagster.sensors.run_range_tags import (
    WORKER_TAG,
    TaggedRange,
    tagged_ranges,
)
from itel_dagster.settings.paths import PROJECT_ROOT
from itel_dagster.settings.workers import WorkerSettings


class LagTimeout(RuntimeError):
    """A group did not reach the expected offsets in time: records are unaccounted for."""


@dataclass
class DagsterDaemon:
    home: Path
    env: dict[str, str]
    dagster_yaml: Path
    log_file: Path
    process: subprocess.Popen | None = None
    started_at: float = 0.0  # time.time() of the spawn

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.dagster_yaml, self.home / "dagster.yaml")
        daemon = Path(sys.executable).parent / "dagster-daemon"
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [str(daemon), "run", "-w", str(PROJECT_ROOT / "workspace.yaml")],
                env={**os.environ, **self.env, "DAGSTER_HOME": str(self.home)},
                cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        self.started_at = time.time()

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"dagster-daemon exited with {self.process.returncode}; "
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
        """SIGTERM to the daemon's own process group (code server, run processes), then KILL."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def wait_until_caught_up(bootstrap: str, workers: list[WorkerSettings], targets: dict[int, int],
                         timeout: float, on_progress=lambda done: None,
                         check=lambda: None) -> dict[str, float]:
    """Poll both groups until each committed `targets` (partition -> offset) on every partition;
    worker -> time.time() it got there. on_progress(records committed so far, both groups)."""
    reached: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while True:
        done = 0
        for worker in workers:
            progress = group_progress(bootstrap, worker.consumer_group, worker.input_topic)
            committed = {p.partition: p.committed or 0 for p in progress}
            done += sum(min(committed.get(p, 0), end) for p, end in targets.items())
            if worker.name not in reached and all(committed.get(p, 0) >= end
                                                  for p, end in targets.items()):
                reached[worker.name] = time.time()
        on_progress(done)
        if len(reached) == len(workers):
            return reached
        check()
        if time.monotonic() > deadline:
            missing = [w.name for w in workers if w.name not in reached]
            raise LagTimeout(f"{', '.join(missing)} did not commit {targets} within {timeout:.0f} s")
        time.sleep(0.5)


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
