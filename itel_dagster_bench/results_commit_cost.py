"""What publishing a run's results and committing its offsets costs, on a fresh local broker:
at-least-once (a plain idempotent producer, flush, then a separate offset commit) against one
Kafka transaction (init_transactions, which fences older runs of the lane, then the records and
the offsets committed together). Prints median wall, client CPU and broker CPU per run; asserts
nothing.

    python -m itel_dagster_bench.results_commit_cost [--runs 30] [--records 50 1000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from itel_dagster_bench.process_cpu import cpu_seconds
from itel_dagster.devstack.kafka.broker import LocalKafkaBroker
from itel_dagster.devstack.kafka.topics import ensure_topics
from itel_dagster.kafka.offsets import commit_offsets
from itel_dagster.kafka.results_producer import ResultsProducer
from itel_dagster.kafka.results_transaction import ResultsTransaction, transactional_id

SOURCE, RESULTS, GROUP = "commit-cost.input", "commit-cost.success", "commit-cost-group"
VALUE = json.dumps({"event_id": "e" * 36, "payload": "x" * 1_200}).encode()


def _at_least_once(servers: str, records: int, offset: int) -> None:
    producer = ResultsProducer(servers, client_id="cost-plain")
    producer.send(RESULTS, ((f"{i}".encode(), VALUE) for i in range(records)))
    producer.flush()
    commit_offsets(servers, GROUP, SOURCE, {0: offset})


def _transaction(servers: str, records: int, offset: int) -> None:
    run = ResultsTransaction(servers, transactional_id(GROUP, SOURCE, {0}), client_id="cost-txn")
    run.begin()
    run.send(RESULTS, ((f"{i}".encode(), VALUE) for i in range(records)))
    run.commit(GROUP, SOURCE, {0: offset})


def _measure(publish, servers: str, records: int, runs: int, broker_pid: int,
             first_offset: int) -> dict:
    walls, clients, brokers = [], [], []
    for n in range(runs):
        client, broker, began = cpu_seconds(), cpu_seconds(broker_pid), time.perf_counter()
        publish(servers, records, first_offset + n + 1)
        walls.append((time.perf_counter() - began) * 1000)
        clients.append((cpu_seconds() - client) * 1000)
        brokers.append((cpu_seconds(broker_pid) - broker) * 1000)
    return {"wall_ms": round(statistics.median(walls), 1),
            "client_cpu_ms": round(statistics.median(clients), 1),
            "broker_cpu_ms": round(statistics.median(brokers), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--records", type=int, nargs="+", default=[50, 1000])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="itel-commit-cost-"))
    broker = LocalKafkaBroker(work / "kafka", port=0, partitions=1)
    status = broker.start()
    figures = []
    try:
        servers = status.bootstrap_servers
        ensure_topics(servers, {SOURCE: "input", RESULTS: "success"}, partitions=1)
        offset = 0
        _at_least_once(servers, 1, offset)  # connections, topics and the group warm
        _transaction(servers, 1, offset)
        print(f"{'records/run':>11} {'mode':16} {'wall ms':>8} {'client CPU ms':>14} "
              f"{'broker CPU ms':>14}")
        for records in args.records:
            for mode, publish in (("at-least-once", _at_least_once),
                                  ("transaction", _transaction)):
                figure = _measure(publish, servers, records, args.runs, status.pid, offset)
                offset += args.runs
                figures.append({"records": records, "mode": mode, **figure})
                print(f"{records:>11} {mode:16} {figure['wall_ms']:>8} "
                      f"{figure['client_cpu_ms']:>14} {figure['broker_cpu_ms']:>14}")
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"runs": args.runs, "figures": figures}))


if __name__ == "__main__":
    main()
