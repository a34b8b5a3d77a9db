"""The Dagster path's catch-up of one worker alone, without the rest of the bench: the other
worker's group is committed to the backlog's end first, so only this worker's sensor starts runs.

`itel-dagster bench` runs both workers through Dagster at once, on the same cores, against each
worker's in-process limit measured alone. This tells the cost of going through Dagster apart from
the cost of sharing the cores with the other worker:

    python -m itel_dagster_bench.solo_catch_up --worker tracking --events 100000 --in-process
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from itel_dagster_bench.dagster_path import DagsterDaemon, run_facts, wait_until_caught_up
from itel_dagster_bench.ground_truth import end_offsets
from itel_dagster_bench.in_process import run_in_process
from itel_dagster_bench.stack import BenchStack, StackChoices
from itel_dagster_bench.work_dir import WORK_DIR_HELP, bench_work_dir
from itel_dagster_bench.suite import SHORT, catch_up_figures, stack_cpu_sampler
from itel_dagster.devstack.publisher.publish import publish_events
from itel_dagster.kafka.offsets import commit_offsets
from itel_dagster.settings.paths import PROJECT_ROOT
from itel_dagster.settings.workers import load_workers

WORKERS = {short: name for name, short in SHORT.items()}


def solo_catch_up(work: Path, worker: str, events: int, in_process: bool,
                  latency_ms: float = 20.0, itel_rate_limit: float = 1000.0) -> dict:
    """worker: tracking, api or both. Figures per worker that went through Dagster."""
    dagster_yaml = PROJECT_ROOT / "dagster.yaml"
    stack = BenchStack(work, StackChoices(latency_ms=latency_ms, itel_rate_limit=itel_rate_limit,
                                          sensor_interval_seconds=None, dagster_yaml=dagster_yaml))
    daemon = None
    stack.start()
    try:
        settings = load_workers()
        names = list(WORKERS.values()) if worker == "both" else [WORKERS[worker]]
        chosen = [settings[name] for name in names]
        topic = chosen[0].input_topic
        publish_events(stack.bootstrap, topic, count=events, bad_fraction=0.02, days=3.0, seed=0,
                       progress=False)
        target = end_offsets(stack.bootstrap, topic)
        figures: dict[str, dict] = {SHORT[s.name]: {} for s in chosen}
        if in_process:
            for s in chosen:
                result = run_in_process(stack.bootstrap, s, work / "inprocess/delta",
                                        work / "inprocess")
                figures[SHORT[s.name]]["in_process_events_per_second"] = round(
                    result.events_per_second, 1)
            stack.reset_simulators()
        for name, s in settings.items():
            if name not in names:  # nothing left for it: its sensor starts no run
                commit_offsets(stack.bootstrap, s.consumer_group, s.input_topic, target)

        daemon = DagsterDaemon(work / "dagster_home", stack.env(), dagster_yaml,
                               work / "logs/dagster_daemon.log")
        daemon.start()
        cpu = stack_cpu_sampler(stack, daemon)
        at_lag_0: dict[str, dict] = {}
        try:
            reached = wait_until_caught_up(
                stack.bootstrap, chosen, target, 3600.0, check=daemon.check_alive,
                on_reached=lambda name: at_lag_0.update({name: cpu.used()}))
        finally:
            cpu.stop()
        instance = daemon.instance()
        runs = {name: run_facts(instance, name) for name in WORKERS.values()}
        run_workers = {r.pid: SHORT[name] for name, facts in runs.items() for r in facts if r.pid}
        for s in chosen:
            limit = figures[SHORT[s.name]].get("in_process_events_per_second")
            figures[SHORT[s.name]].update(catch_up_figures(
                runs[s.name], reached[s.name] - daemon.started_at, sum(target.values()), limit,
                at_lag_0[s.name], run_workers))
        return {"worker": worker, "events": sum(target.values()),
                "runs_by_worker": {SHORT[name]: len(facts) for name, facts in runs.items()},
                "figures": figures}
    finally:
        if daemon is not None:
            daemon.stop()
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", choices=["tracking", "api", "both"], default="tracking")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--in-process", action="store_true",
                        help="measure the worker's in-process limit first, for the ratio")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--itel-rate-limit", type=float, default=1000.0)
    parser.add_argument("--work-dir", type=Path, help=WORK_DIR_HELP)
    args = parser.parse_args()
    with bench_work_dir(args.work_dir, "itel-solo-") as work:
        result = solo_catch_up(work, args.worker, args.events, args.in_process, args.latency_ms,
                               args.itel_rate_limit)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
