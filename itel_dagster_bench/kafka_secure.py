"""Both workers end to end against a plaintext broker and against a SASL_SSL one (SCRAM-SHA-512
over TLS, every client of the pipeline configured only by the KAFKA_* variables): for each a
fresh bench stack, the same backlog, the code server and dagster-daemon with the repository's
dagster.yaml, until both groups committed it.

    python -m itel_dagster_bench.kafka_secure --events 400

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

from itel_dagster_bench.backlog_drain import drain_backlog
from itel_dagster_bench.stack import BenchStack, StackChoices
from itel_dagster.resources.delta_tables import DeltaTablesResource
from itel_dagster.settings.paths import PROJECT_ROOT


def run_listener(listener: str, events: int, work: Path, seed: int) -> dict:
    stack = BenchStack(work / listener, StackChoices(secure_broker=listener == "sasl_ssl",
                                                     own_broker=True))
    began = time.monotonic()
    try:
        stack.start()  # the stack's variables, the KAFKA_* security ones too, go to os.environ
        stack_up = round(time.monotonic() - began, 1)
        drained = drain_backlog(stack, work / listener, events, seed, {},
                                PROJECT_ROOT / "dagster.yaml")
        return {"stack_start_seconds": stack_up, **drained.figures(),
                "tracking_rows": DeltaTablesResource().read(drained.workers[0].table).height,
                "security_protocol": os.environ.get("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT"}
    finally:
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
