"""What reading a group's progress costs, on a fresh local broker (3 partitions): group_progress
(a new consumer per read) against GroupProgressReader (one kept consumer). Prints client and
broker CPU and wall time per read; asserts nothing.

    python -m itel_dagster_bench.offsets_cost [--reads 40]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from itel_dagster_bench.process_cpu import cpu_seconds
from itel_dagster.devstack.kafka.broker import LocalKafkaBroker
from itel_dagster.devstack.kafka.topics import ensure_topics
from itel_dagster.kafka.offsets import GroupProgressReader, commit_offsets, group_progress

TOPIC, GROUP = "offsets-cost", "offsets-cost-group"


def _per_read(read, reads: int, broker_pid: int) -> str:
    read()  # connections and metadata warm
    broker, client, began = cpu_seconds(broker_pid), cpu_seconds(), time.perf_counter()
    for _ in range(reads):
        read()
    wall = (time.perf_counter() - began) / reads * 1000
    return (f"{(cpu_seconds() - client) / reads * 1000:18.1f} "
            f"{(cpu_seconds(broker_pid) - broker) / reads * 1000:18.1f} {wall:10.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=40)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="itel-offsets-cost-"))
    broker = LocalKafkaBroker(work / "kafka", port=0, partitions=3)
    status = broker.start()
    try:
        servers = status.bootstrap_servers
        ensure_topics(servers, {TOPIC: "input"}, partitions=3)
        commit_offsets(servers, GROUP, TOPIC, {0: 0, 1: 0, 2: 0})
        print(f"{'read':36} {'client CPU ms/read':>18} {'broker CPU ms/read':>18} {'wall ms':>10}")
        print(f"{'group_progress (new consumer)':36} "
              + _per_read(lambda: group_progress(servers, GROUP, TOPIC), args.reads, status.pid))
        with GroupProgressReader(servers, GROUP) as reader:
            print(f"{'GroupProgressReader.read (kept)':36} "
                  + _per_read(lambda: reader.read(TOPIC), args.reads, status.pid))
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
