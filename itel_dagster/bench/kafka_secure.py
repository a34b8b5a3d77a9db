"""Both workers end to end against a plaintext broker and against a SASL_SSL one (SCRAM-SHA-512
over TLS, every client of the pipeline configured only by the KAFKA_* variables): for each a
fresh bench stack, the same backlog, the code server and dagster-daemon with the repository's
dagster.yaml, until both groups committed it.

    python -m itel_dagster.bench.kafka_secure --events 400

Prints one JSON object: per listener, the broker's start time, seconds and events/s from the
first run's start to both groups at lag 0, and the tracking rows found.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from itel_dagster.bench.dagster_path import DagsterDaemon, run_facts, wait_until_caught_up
from itel_dagster.bench.ground_truth import end_offsets
from itel_dagster.bench.seed_workers import API_WORKER, TRACKING_WORKER
from itel_dagster.bench.stack import BenchStack, StackChoices
from itel_dagster.devstack.publisher.publish import publish_events
from itel_dagster.resources.delta_tables import DeltaTablesResource
from itel_dagster.settings.paths import PROJECT_ROOT
from itel_dagster.settings.workers import load_workers

WORKERS = (TRACKING_WORKER, API_WORKER)


def run_listener(listener: str, events: int, work: Path, seed: int) -> dict:
    stack = BenchStack(work / listener, StackChoices(secure_broker=listener == "sasl_ssl",
                                                     own_broker=True))
    daemon = None
    began = time.monotonic()
    try:
        stack.start()  # the stack's variables, the KAFKA_* security ones too, go to os.environ
        broker_up = time.monotonic() - began
        settings = load_workers()
        workers = [settings[name] for name in WORKERS]
        topic = workers[0].input_topic
        publish_events(stack.bootstrap, topic, count=events, bad_fraction=0.02, days=1,
                       seed=seed, progress=False)
        targets = end_offsets(stack.bootstrap, topic)
        daemon = DagsterDaemon(work / listener / "dagster_home", stack.env(),
                               PROJECT_ROOT / "dagster.yaml", work / listener / "daemon.log")
        daemon.start()
        reached = wait_until_caught_up(stack.bootstrap, workers, targets, timeout=1800,
                                       check=daemon.check_alive)
        done = max(reached.values())
        first_run = min(r.started_at for name in WORKERS
                        for r in run_facts(daemon.instance(), name) if r.started_at)
        return {"stack_start_seconds": round(broker_up, 1), "events": sum(targets.values()),
                "seconds_from_first_run": round(done - first_run, 1),
                "events_per_second": round(sum(targets.values()) / (done - first_run), 1),
                "tracking_rows": DeltaTablesResource().read(workers[0].table).height,
                "security_protocol": os.environ.get("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT"}
    finally:
        if daemon is not None:
            daemon.stop()
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--listeners", default="plaintext,sasl_ssl")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="itel-kafka-secure-"))
    result = {}
    for listener in options.listeners.split(","):
        result[listener] = run_listener(listener, options.events, work, options.seed)
        print(listener, json.dumps(result[listener]), file=sys.stderr, flush=True)
    result["load_average"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
