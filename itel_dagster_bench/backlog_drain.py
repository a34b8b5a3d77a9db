"""One leg of the production-connectivity benches: a backlog published to a bench stack, then both
workers through a real code server and dagster-daemon until both groups committed it.

bench.kafka_secure, bench.delta_object_store and bench.state_backends differ only in the stack
and the variables of each leg.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from itel_dagster_bench.dagster_path import DagsterDaemon, run_facts, wait_until_caught_up
from itel_dagster_bench.ground_truth import end_offsets
from itel_dagster_bench.seed_workers import API_WORKER, TRACKING_WORKER
from itel_dagster_bench.stack import BenchStack
from itel_dagster.devstack.publisher.publish import publish_events
from itel_dagster.settings.workers import WorkerSettings, load_workers

WORKERS = (TRACKING_WORKER, API_WORKER)


@dataclass(frozen=True)
class Drained:
    events: int
    seconds_from_first_run: float
    seconds_from_code_server_start: float
    workers: list[WorkerSettings]

    def figures(self) -> dict:
        return {"events": self.events, "seconds_from_first_run": self.seconds_from_first_run,
                "events_per_second": round(self.events / self.seconds_from_first_run, 1)}


def drain_backlog(stack: BenchStack, work: Path, events: int, seed: int,
                  leg_env: dict[str, str], dagster_yaml: Path) -> Drained:
    """Publishes `events` (2% invalid, one day) to the started stack and times both workers
    through a daemon with `dagster_yaml` and the stack's variables plus `leg_env`."""
    workers = [load_workers()[name] for name in WORKERS]
    topic = workers[0].input_topic
    publish_events(stack.bootstrap, topic, count=events, bad_fraction=0.02, days=1, seed=seed,
                   progress=False)
    targets = end_offsets(stack.bootstrap, topic)
    stack.reset_simulators()
    daemon = DagsterDaemon(work / "dagster_home", {**stack.env(), **leg_env}, dagster_yaml,
                           work / "daemon.log")
    daemon.start()
    try:
        reached = wait_until_caught_up(stack.bootstrap, workers, targets, timeout=1800,
                                       check=daemon.check_alive)
        done = max(reached.values())
        first_run = min(r.started_at for name in WORKERS
                        for r in run_facts(daemon.instance(), name) if r.started_at)
        return Drained(sum(targets.values()), round(done - first_run, 1),
                       round(done - daemon.started_at, 1), workers)
    finally:
        daemon.stop()
