"""What a worker's `batch_size` (records per Kafka fetch: one consume() call of the range reader)
costs, on a fresh local broker: one range of N records read with each fetch size. Prints wall
time, client CPU and consume() calls per read (median of --reads); asserts nothing.

    python -m itel_dagster_bench.fetch_size [--records 20000] [--sizes 50 100 1000 10000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from confluent_kafka import Producer

from itel_dagster_bench.process_cpu import cpu_seconds
from itel_dagster.devstack.kafka.broker import LocalKafkaBroker
from itel_dagster.devstack.kafka.topics import ensure_topics
from itel_dagster.kafka.client_config import client_config
from itel_dagster.kafka.range_reader import read_range

TOPIC = "fetch-size.input"
VALUE = json.dumps({"event_id": "e" * 36, "payload": "x" * 1_200}).encode()  # ~1.3 KB, as events


def _fill(servers: str, records: int) -> None:
    producer = Producer(client_config(servers, **{"linger.ms": 20, "acks": "all"}))
    for i in range(records):
        producer.produce(TOPIC, key=str(i).encode(), value=VALUE, partition=0)
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 1_000, 10_000])
    parser.add_argument("--reads", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="itel-fetch-size-"))
    broker = LocalKafkaBroker(work / "kafka", port=0, partitions=1)
    status = broker.start()
    try:
        servers = status.bootstrap_servers
        ensure_topics(servers, {TOPIC: "input"}, partitions=1)
        _fill(servers, args.records)
        read_range(servers, TOPIC, 0, 0, args.records)  # connections and page cache warm
        print(f"{args.records} records of {len(VALUE)} bytes, one partition, median of "
              f"{args.reads} reads")
        print(f"{'batch_size':>10} {'wall ms':>9} {'client CPU ms':>14} {'fetches':>8}")
        for size in args.sizes:
            walls, cpus, fetches = [], [], 0
            for _ in range(args.reads):
                client, began = cpu_seconds(), time.perf_counter()
                read = read_range(servers, TOPIC, 0, 0, args.records, fetch_records=size)
                walls.append((time.perf_counter() - began) * 1000)
                cpus.append((cpu_seconds() - client) * 1000)
                assert len(read.records) == args.records
                fetches = read.fetches
            print(f"{size:>10} {statistics.median(walls):>9.0f} {statistics.median(cpus):>14.0f} "
                  f"{fetches:>8}")
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
