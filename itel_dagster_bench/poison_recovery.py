"""How long one poison record holds a worker: a backlog with one record in its middle that no run
can handle (a bug it hits, see poison_location.py), drained through Dagster with default
settings. It prints the time from the first failed run to lag 0 and checks that the poison record
is dead-lettered once and every other record handled once:

    python -m itel_dagster_bench.poison_recovery --worker api --events 10000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

import polars as pl

from itel_dagster_bench.dagster_path import DagsterDaemon, run_facts, wait_until_caught_up
from itel_dagster_bench.ground_truth import end_offsets, read_input, topic_messages
from itel_dagster_bench.poison_location import POISON_ENV
from itel_dagster_bench.stack import BenchStack, StackChoices
from itel_dagster_bench.work_dir import WORK_DIR_HELP, bench_work_dir
from itel_dagster.devstack.publisher.publish import publish_events
from itel_dagster.kafka.offsets import commit_offsets
from itel_dagster.sensors.run_range_tags import ISOLATION_TAG
from itel_dagster.settings.paths import PROJECT_ROOT
from itel_dagster_bench.seed_workers import API_WORKER, TRACKING_WORKER
from itel_dagster.settings.workers import load_workers

WORKERS = {"tracking": TRACKING_WORKER, "api": API_WORKER}
TARGET_SECONDS = 180.0


def poison_recovery(work: Path, worker: str, events: int) -> dict:
    dagster_yaml = PROJECT_ROOT / "dagster.yaml"
    stack = BenchStack(work, StackChoices(dagster_yaml=dagster_yaml))
    daemon = None
    stack.start()
    try:
        settings = load_workers()
        chosen = settings[WORKERS[worker]]
        topic = chosen.input_topic
        # Within the last hour: one UTC day at most twice, so runs hold whole ranges.
        publish_events(stack.bootstrap, topic, count=events, bad_fraction=0.02, days=0.04,
                       seed=0, progress=False)
        target = end_offsets(stack.bootstrap, topic)
        published = read_input(stack.bootstrap, topic)
        valid = [r for r in published if r.valid]
        poison = valid[len(valid) // 2]
        for name, s in settings.items():
            if name != chosen.name:  # the other worker has nothing to do
                commit_offsets(stack.bootstrap, s.consumer_group, s.input_topic, target)
        daemon = DagsterDaemon(work / "dagster_home", {**stack.env(), POISON_ENV: poison.event_id},
                               dagster_yaml, work / "logs/dagster_daemon.log",
                               definitions_module="itel_dagster_bench.poison_location")
        daemon.start()
        reached = wait_until_caught_up(stack.bootstrap, [chosen], target, 1800.0,
                                       check=daemon.check_alive)[chosen.name]
        runs = run_facts(daemon.instance(), chosen.name)
        failed = [r for r in runs if r.status == "FAILURE"]
        first_failure = min(r.ended_at for r in failed) if failed else None
        instance = daemon.instance()
        roles = {r.run_id: (instance.get_run_by_id(r.run_id).tags.get(ISOLATION_TAG)
                            or "none").split(" ")[0] for r in runs}
        isolation = Counter(roles.values())
        isolating = sorted((r for r in runs if roles[r.run_id] != "none" and r.ended_at),
                           key=lambda r: r.ended_at)
        whole = sorted((r for r in failed if roles[r.run_id] == "none"), key=lambda r: r.ended_at)

        errors = [json.loads(m.value())
                  for m in topic_messages(stack.bootstrap, chosen.error_topic)]
        dead = [e for e in errors if e["stage"] == "poison"]
        others = {r.event_id for r in valid} - {poison.event_id}
        if chosen.name == TRACKING_WORKER:
            handled = Counter(pl.read_delta(str(stack.delta_root / chosen.delta_table))["event_id"]
                              .to_list())
        else:
            handled = Counter(r["idempotency_key"] for r in stack.itel_requests())
        checks = {
            "poison_dead_lettered_once": [e["event_id"] for e in dead] == [poison.event_id],
            "others_handled_once": set(handled) == others and set(handled.values()) == {1},
            "invalid_records_on_error_topic": sum(e["stage"] == "validate" for e in errors)
            == len(published) - len(valid),
        }
        seconds = None if first_failure is None else round(reached - first_failure, 1)
        return {
            "worker": worker, "events": sum(target.values()),
            "poison": {"partition": poison.partition, "offset": poison.offset,
                       "event_id": poison.event_id},
            "first_failure_to_lag_0_seconds": seconds,
            "target_seconds": TARGET_SECONDS,
            "runs": len(runs), "failed_runs": len(failed),
            "runs_by_isolation_role": dict(isolation),
            # Where the time went: the failed runs of the whole range, then the isolation runs.
            "whole_range_failed_run_seconds": [round(r.seconds, 1) for r in whole if r.seconds],
            "isolation_seconds": round(isolating[-1].ended_at - whole[-1].ended_at, 1)
            if isolating and whole else None,
            "isolation_run_median_seconds": round(statistics.median(
                r.seconds for r in isolating if r.seconds), 1) if isolating else None,
            "dead_letter_reason": dead[0]["error_message"] if dead else None,
            "checks": checks,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    finally:
        if daemon is not None:
            daemon.stop()
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", choices=sorted(WORKERS), default="api")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--work-dir", type=Path, help=WORK_DIR_HELP)
    args = parser.parse_args()
    with bench_work_dir(args.work_dir, "itel-poison-") as work:
        result = poison_recovery(work, args.worker, args.events)
    print(json.dumps(result, indent=2))
    seconds = result["first_failure_to_lag_0_seconds"]
    print(f"{args.worker} worker, {result['events']} records, one poison record: first failed run "
          f"-> lag 0 in {seconds} s (target under {TARGET_SECONDS:.0f} s); checks "
          f"{'all passed' if all(result['checks'].values()) else result['checks']}")


if __name__ == "__main__":
    main()
