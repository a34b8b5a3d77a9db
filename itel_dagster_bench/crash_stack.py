"""A real stack to crash: its own Kafka broker, both simulators and the Dagster path (code server
plus `dagster-daemon run` with the project's dagster.yaml, or another instance YAML: warm-fork
launcher, run monitoring, run retries), with crash points armed through ITEL_CRASH_POINTS_FILE. The crash matrix test and
the chaos soak drive it: publish a batch, arm points or kill runs, the daemon or the broker, wait
for lag 0, then check what survived against the ground truth, never against what the pipeline
says. It only kills processes it started.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from itel_dagster_bench.correctness import read_table
from itel_dagster_bench.dagster_path import (
    DagsterDaemon,
    LagTimeout,
    RunFacts,
    run_facts,
    wait_until_caught_up,
)
from itel_dagster_bench.ground_truth import InputRecord, committed_messages, end_offsets, read_input
from itel_dagster_bench.stack import BenchStack, StackChoices
from itel_dagster.crash_points import CRASH_POINTS_ENV, arm, armed, fired_times
from itel_dagster.devstack.publisher.publish import publish_events
from itel_dagster.kafka.offsets import group_progress
from itel_dagster.settings.paths import PROJECT_ROOT
from itel_dagster_bench.seed_workers import API_WORKER, TRACKING_WORKER
from itel_dagster.settings.workers import WorkerSettings, load_workers

WORKERS = (TRACKING_WORKER, API_WORKER)
LIVE_STATUSES = ("STARTING", "STARTED")


@dataclass(frozen=True)
class Batch:
    """Records published in one go, read back from the input topic, and the offsets they end at."""

    records: tuple[InputRecord, ...]
    target: dict[int, int]  # partition -> input high watermark after publishing
    published_at: float  # time.time() publishing began

    @property
    def valid_ids(self) -> set[str]:
        return {r.event_id for r in self.records if r.valid}


@dataclass(frozen=True)
class Invariants:
    """What a batch left behind after a drain; each figure is 0 when nothing was lost or doubled.
    Results are counted per input record, by the Kafka coordinates every success and error record
    carries (one per event_id, and records without a readable event_id count too), on each
    worker's success and error topics read with isolation.level=read_committed."""

    events: int
    lost_delta_rows: int  # valid events without their tracking row
    duplicate_delta_rows: int  # rows of the whole table beyond one per event_id
    lost_itel_sends: int  # valid events iTel never accepted
    lost_results: int  # input records without a success or error record, per worker
    duplicate_results: int  # result records beyond one per input record, per worker
    re_posts: int  # POSTs of an accepted Idempotency-Key beyond its first
    lag: int  # both groups, on every partition

    @property
    def lost(self) -> int:
        return self.lost_delta_rows + self.lost_itel_sends + self.lost_results

    def failures(self, max_re_posts: int) -> list[str]:
        """The broken invariants, as sentences; [] when all hold."""
        found = {"lost": self.lost, "duplicate Delta rows": self.duplicate_delta_rows,
                 "duplicate result records (read_committed)": self.duplicate_results,
                 "lag": self.lag}
        problems = [f"{name}: {n}" for name, n in found.items() if n]
        if self.re_posts > max_re_posts:
            problems.append(f"re-POSTs: {self.re_posts}, more than {max_re_posts}")
        return problems


@dataclass
class CrashStack:
    """Start once, then publish / arm / kill / wait_drained / check as often as needed."""

    work: Path
    send_round_size: int = 32
    latency_ms: float = 5.0
    # The instance YAML the daemon runs with (the stock-Dagster leg passes one without our blocks).
    dagster_yaml: Path = PROJECT_ROOT / "dagster.yaml"
    stack: BenchStack = field(init=False)
    daemon: DagsterDaemon = field(init=False)
    _saved_env: dict[str, str] = field(default_factory=dict, init=False)
    _seed: int = field(default=0, init=False)

    @property
    def points_file(self) -> Path:
        return self.work / "crash_points"

    @property
    def bootstrap(self) -> str:
        return self.stack.bootstrap

    def start(self) -> None:
        # BenchStack exports its env so that in-process checks read its config: put ours back at
        # stop(), since a test session goes on after this stack.
        self._saved_env = dict(os.environ)
        self.stack = BenchStack(self.work, StackChoices(
            latency_ms=self.latency_ms, send_round_size=self.send_round_size, own_broker=True,
            dagster_yaml=self.dagster_yaml))
        self.stack.start()
        self.points_file.touch()
        self.daemon = DagsterDaemon(
            self.work / "dagster_home", {**self.stack.env(), CRASH_POINTS_ENV: str(self.points_file)},
            self.dagster_yaml, self.work / "logs/dagster_daemon.log")
        self.daemon.start()

    def stop(self) -> None:
        try:
            if getattr(self, "daemon", None) is not None:
                # Killed, not stopped: nothing it would finish is looked at afterwards.
                for process in (self.daemon.process, self.daemon.code_server):
                    if process is not None and process.poll() is None:
                        os.killpg(process.pid, signal.SIGKILL)
                        process.wait()
        finally:
            if getattr(self, "stack", None) is not None:
                self.stack.stop()
            os.environ.clear()
            os.environ.update(self._saved_env)

    def __enter__(self) -> CrashStack:
        self.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

    @property
    def workers(self) -> dict[str, WorkerSettings]:
        return load_workers()

    # -- faults ---------------------------------------------------------------------------------
    def arm(self, worker: str, point: str) -> None:
        """The next run of `worker` (a workers.yaml name) to reach `point` dies there (SIGKILL)."""
        arm(self.points_file, worker, point)

    def armed(self) -> list[str]:
        return armed(self.points_file)

    def fired_since(self, since: float) -> list[tuple[str, float]]:
        """(`<worker>:<point>`, time.time() it fired) of the points that fired after `since`."""
        return [(line, at) for line, at in fired_times(self.points_file) if at >= since]

    def runs(self, worker: str | None = None) -> list[RunFacts]:
        instance = self.daemon.instance()
        return [r for w in ([worker] if worker else WORKERS) for r in run_facts(instance, w)]

    def live_runs(self, worker: str | None = None) -> list[RunFacts]:
        return [r for r in self.runs(worker) if r.status in LIVE_STATUSES and r.pid]

    def wait_for_started_run(self, worker: str | None = None, timeout: float = 60.0) -> RunFacts:
        """A run executing its ops while no run is STARTING: Dagster's run monitoring fails a
        dead STARTING run only after run_monitoring.start_timeout_seconds (60 s in
        dagster.yaml), so a kill then would measure that timeout, not the recovery."""
        deadline = time.monotonic() + timeout
        while True:
            live = self.live_runs()
            started = [r for r in live if r.status == "STARTED" and worker in (None, r.worker)]
            if started and all(r.status == "STARTED" for r in live):
                return started[0]
            self.daemon.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"no run of {worker or 'either worker'} started in {timeout} s")
            time.sleep(0.1)

    def kill_runs(self, worker: str | None = None) -> list[RunFacts]:
        """SIGKILL the live run processes (by the launcher's pid tag); the runs killed."""
        killed = []
        for run in self.live_runs(worker):
            try:
                os.kill(run.pid, signal.SIGKILL)
                killed.append(run)
            except ProcessLookupError:
                pass  # it ended meanwhile
        return killed

    def restart_daemon(self) -> list[RunFacts]:
        """SIGKILL the daemon's process group and start it again; the runs that died with it."""
        live = self.live_runs()
        self.daemon.kill_and_restart_daemon()
        return live

    def restart_broker(self) -> None:
        """SIGKILL the broker's JVM and start it again on the same port and log dir."""
        self.stack.restart_broker()

    # -- batches ----------------------------------------------------------------------------------
    def publish(self, count: int, bad_fraction: float = 0.05) -> Batch:
        """`count` new events (a fresh seed each call, so event_ids never repeat), stamped within
        the last hour."""
        topic = self.workers[TRACKING_WORKER].input_topic
        before = end_offsets(self.bootstrap, topic)
        started = time.time()  # a run may take the first records before publish_events returns
        self._seed += 1
        publish_events(self.bootstrap, topic, count=count, bad_fraction=bad_fraction, days=0.02,
                       seed=int(time.time()) * 100 + self._seed, progress=False)
        target = end_offsets(self.bootstrap, topic)
        return Batch(tuple(read_input(self.bootstrap, topic, before, target)), target, started)

    def wait_drained(self, batch: Batch, timeout: float = 120.0) -> float:
        """Until both groups committed the batch; time.time() the later got there. A timeout
        says what the runs not yet ended were doing."""
        try:
            reached = wait_until_caught_up(self.bootstrap, [self.workers[w] for w in WORKERS],
                                           batch.target, timeout, check=self.daemon.check_alive)
        except LagTimeout as timed_out:
            raise LagTimeout(f"{timed_out}\n{self.diagnosis()}") from None
        return max(reached.values())

    def diagnosis(self) -> str:
        """The runs not ended (status, age, process, last events) and each worker log's tail."""
        lines = []
        instance = self.daemon.instance()
        for run in self.runs():
            if run.status in ("SUCCESS", "FAILURE", "CANCELED"):
                continue
            alive = run.pid is not None and Path(f"/proc/{run.pid}").exists()
            lines.append(f"run {run.run_id} {run.worker} {run.status}, created "
                         f"{time.time() - run.created_at:.0f} s ago, pid {run.pid} "
                         f"({'alive' if alive else 'gone'}), ranges "
                         f"{[(r.partition, r.start, r.end) for r in run.ranges]}")
            for event in instance.all_logs(run.run_id)[-4:]:
                lines.append(f"    {event.dagster_event_type or ''} {event.step_key or ''} "
                             f"{(event.message or '')[:200]}")
        for name in ("tracking_worker.log", "api_worker.log"):
            log = self.work / "logs" / name
            tail = log.read_text(errors="replace").splitlines()[-3:] if log.exists() else []
            lines += [f"{name}: {line[:300]}" for line in tail]
        return "\n".join(lines) or "no run in flight"

    def check(self, batch: Batch) -> Invariants:
        workers = self.workers
        valid = batch.valid_ids
        tracking = workers[TRACKING_WORKER]
        rows = read_table(self.stack.delta_root / (tracking.delta_table or
                                                   "itel_cabinet_task_tracking"), ["event_id"])
        row_ids = rows["event_id"]
        sends = {r["idempotency_key"]: r["requests"] for r in self.stack.itel_requests()}
        lost_results = duplicate_results = lag = 0
        # The two workers of the batch's records (the trigger, if configured, reads another topic).
        for worker in (workers[name] for name in WORKERS):
            found = Counter(_input_coordinates(m) for m in committed_messages(
                self.bootstrap, [worker.success_topic, worker.error_topic]))
            for record in batch.records:
                n = found.get((record.partition, record.offset), 0)
                lost_results += n == 0
                duplicate_results += max(n - 1, 0)
            lag += sum(p.lag for p in group_progress(self.bootstrap, worker.consumer_group,
                                                     worker.input_topic))
        return Invariants(
            events=len(batch.records),
            lost_delta_rows=len(valid - set(row_ids.to_list())),
            duplicate_delta_rows=row_ids.len() - row_ids.n_unique(),
            lost_itel_sends=len(valid - set(sends)),
            lost_results=lost_results,
            duplicate_results=duplicate_results,
            re_posts=sum(sends[e] - 1 for e in valid if e in sends),
            lag=lag,
        )


def _input_coordinates(message) -> tuple[int, int]:
    """The input record a success or error record is the outcome of."""
    value = orjson.loads(message.value())
    return value["kafka_partition"], value["kafka_offset"]

