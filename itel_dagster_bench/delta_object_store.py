"""Both workers end to end with Delta on local disk and on the Azure Storage emulator (Azurite):
for each store a fresh bench stack (broker, simulators, config copy), the same backlog, the code
server and dagster-daemon with the repository's dagster.yaml, until both groups committed it.

    python -m itel_dagster_bench.delta_object_store --events 400

Prints one JSON object: per store, seconds and events/s from the first run's start to both groups
at lag 0 (and from the code server's start), the tracking rows found; Azurite's start time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from itel_dagster_bench.backlog_drain import drain_backlog
from itel_dagster_bench.stack import BenchStack, StackChoices
from itel_dagster.devstack.azurite import LocalAzurite
from itel_dagster.resources.delta_tables import DeltaTablesResource
from itel_dagster.settings.paths import PROJECT_ROOT


def run_store(store: str, events: int, work: Path, seed: int) -> dict:
    # A broker of its own per store: the first store's variables are still in os.environ.
    stack = BenchStack(work / store, StackChoices(own_broker=True))
    azurite = None
    try:
        stack.start()  # sets the stack's variables in os.environ (ITEL_DELTA_ROOT: local disk)
        delta_env = {"ITEL_DELTA_ROOT": str(stack.delta_root), "ITEL_DELTA_STORAGE_OPTIONS": ""}
        figures: dict = {}
        if store == "azurite":
            azurite = LocalAzurite(work / "azurite").start()
            figures["emulator_start_seconds"] = round(azurite.start_seconds, 2)
            container = f"bench-{uuid.uuid4().hex[:10]}"
            azurite.create_container(container)
            delta_env = {"ITEL_DELTA_ROOT": f"az://{container}/delta",
                         "ITEL_DELTA_STORAGE_OPTIONS": json.dumps(azurite.storage_options())}
        os.environ.update(delta_env)
        drained = drain_backlog(stack, work / store, events, seed, delta_env,
                                PROJECT_ROOT / "dagster.yaml")
        return {**figures, **drained.figures(),
                "seconds_from_code_server_start": drained.seconds_from_code_server_start,
                "tracking_rows": DeltaTablesResource().read(drained.workers[0].table).height,
                "delta_root": delta_env["ITEL_DELTA_ROOT"]}
    finally:
        if azurite is not None:
            azurite.stop()
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--stores", default="local,azurite")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="itel-delta-store-"))
    started = time.time()
    result = {}
    for store in options.stores.split(","):
        result[store] = run_store(store, options.events, work, options.seed)
        print(store, json.dumps(result[store]), file=sys.stderr, flush=True)
    result["load_average"] = os.getloadavg()
    result["wall_seconds"] = round(time.time() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
