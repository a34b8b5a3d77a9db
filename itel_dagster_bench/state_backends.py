"""Both workers end to end with the shared state (ClaimX cache, iTel breaker, metric sums) in
SQLite files, in PostgreSQL (ITEL_STATE_URL), and with Dagster's storage on PostgreSQL too
(deploy/dagster.postgres.yaml): per leg a fresh bench stack and broker, the same backlog, a code
server and dagster-daemon, until both consumer groups committed it.

    python -m itel_dagster_bench.state_backends --events 400

Prints one JSON object: per leg, seconds and events/s from the first run's start to both groups
at lag 0, ClaimX GETs made; the PostgreSQL server's start time.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

from itel_dagster_bench.backlog_drain import drain_backlog
from itel_dagster_bench.stack import BenchStack, StackChoices
from itel_dagster.devstack.postgres import LocalPostgres
from itel_dagster.settings.paths import PROJECT_ROOT
# leg -> (state in PostgreSQL, Dagster's instance file)
LEGS = {
    "sqlite": (False, PROJECT_ROOT / "dagster.yaml"),
    "postgres_state": (True, PROJECT_ROOT / "dagster.yaml"),
    "postgres_all": (True, PROJECT_ROOT / "deploy/dagster.postgres.yaml"),
}


def run_leg(leg: str, events: int, work: Path, seed: int, postgres: LocalPostgres | None) -> dict:
    state_in_postgres, dagster_yaml = LEGS[leg]
    stack = BenchStack(work / leg, StackChoices(own_broker=True))
    try:
        stack.start()  # its variables go into os.environ
        leg_env = {"ITEL_STATE_URL": ""}
        if state_in_postgres:
            database = f"bench_{uuid.uuid4().hex[:8]}"
            leg_env["ITEL_STATE_URL"] = postgres.create_database(database)
            leg_env.update(postgres.dagster_env(database))  # read only by dagster.postgres.yaml
        os.environ.update(leg_env)
        drained = drain_backlog(stack, work / leg, events, seed, leg_env, dagster_yaml)
        return {**drained.figures(), "claimx_gets": stack.claimx_gets()}
    finally:
        stack.stop()
        os.environ.pop("KAFKA_BOOTSTRAP_SERVERS", None)  # that leg's broker is gone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--legs", default=",".join(LEGS))
    options = parser.parse_args()
    # Not under a private folder: the server runs as the `postgres` user (devstack/postgres.py).
    work = Path(tempfile.mkdtemp(prefix="itel-state-backends-"))
    work.chmod(0o755)
    legs = options.legs.split(",")
    postgres = None
    result: dict = {}
    started = time.time()
    try:
        if any(LEGS[leg][0] for leg in legs):
            postgres = LocalPostgres(work / "postgres").start()
            result["postgres_start_seconds"] = round(postgres.start_seconds, 2)
        for leg in legs:
            result[leg] = run_leg(leg, options.events, work, options.seed, postgres)
    finally:
        if postgres is not None:
            postgres.stop()
    result["load_average"] = os.getloadavg()
    result["wall_seconds"] = round(time.time() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
