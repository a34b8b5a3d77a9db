"""One plugin-trigger run over N upstream ClaimX task events (default 5,000, 30% of other tasks)
on a fresh local broker and Delta on disk: upstream events per second, the run's wall time split by
stage, and how many seed events it published. Prints figures; asserts nothing.

    python -m itel_dagster_bench.trigger_run [--records 5000] [--other-task-fraction 0.3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
from confluent_kafka import Producer

from itel_dagster_bench.tracking_run import stage_seconds
from itel_dagster.devstack.kafka.broker import LocalKafkaBroker
from itel_dagster.devstack.kafka.topics import ensure_topics, pipeline_topics
from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.devstack.publisher.upstream_events import upstream_records
from itel_dagster.kafka.client_config import client_config
from itel_dagster.sensors.dispatch_plan import KafkaRange, PlannedRange, PlannedRun
from itel_dagster.sensors.kafka_worker_sensor import partition_key_for, range_run_config, run_tags
from itel_dagster.settings.workers import KAFKA_PUBLISH, load_workers, workers_with_final_stage


def publish_upstream_day(bootstrap: str, topic: str, count: int, other_task_fraction: float):
    """`count` upstream events inside yesterday (UTC), on partition 0: one run holds them all."""
    midnight = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    producer = Producer(client_config(bootstrap, **{"linger.ms": 20, "acks": "all"}))
    records = upstream_records(generate_records(count=count, seed=5, days=0.9,
                                                now=midnight - timedelta(hours=1)),
                               other_task_fraction, seed=5)
    for record in records:
        producer.produce(topic, key=record.key, value=record.value,
                         timestamp=record.timestamp_ms, partition=0)
        producer.poll(0)
    producer.flush(120)
    return (midnight - timedelta(days=1)).date()


def main() -> None:
    parser = argparse.ArgumentParser(description="Time one plugin-trigger run.")
    parser.add_argument("--records", type=int, default=5_000)
    parser.add_argument("--other-task-fraction", type=float, default=0.3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="itel-bench-"))
    broker = LocalKafkaBroker(work / "kafka", port=0)
    try:
        bootstrap = broker.start().bootstrap_servers
        os.environ.update(KAFKA_BOOTSTRAP_SERVERS=bootstrap, ITEL_DELTA_ROOT=str(work / "delta"),
                          ITEL_STATE_DIR=str(work / "var"))
        [trigger] = workers_with_final_stage(KAFKA_PUBLISH)
        ensure_topics(bootstrap, pipeline_topics(load_workers()), partitions=1)
        day = publish_upstream_day(bootstrap, trigger.input_topic, args.records,
                                   args.other_task_fraction)

        from itel_dagster.definitions import defs

        planned = PlannedRun((PlannedRange(KafkaRange(trigger.input_topic, 0, 0, args.records),
                                           day),))
        job = defs.resolve_job_def(trigger.job)
        with dg.instance_for_test() as instance:
            began = time.perf_counter()
            result = job.execute_in_process(
                run_config=range_run_config(trigger, planned, trigger.asset),
                partition_key=partition_key_for(day), tags=run_tags(trigger, planned),
                instance=instance)
            wall = time.perf_counter() - began
            stages = stage_seconds(instance, result.run_id)
        metadata = {k: getattr(v, "value", v) for e in result.get_asset_materialization_events()
                    for k, v in e.materialization.metadata.items()}
        print(f"\ntrigger run over {metadata.get('records', '?')} upstream events "
              f"(success={result.success}): {metadata.get('succeeded', '?')} seed events "
              f"published, {metadata.get('skipped_other_tasks', '?')} of other tasks skipped")
        for stage, seconds in stages.items():
            print(f"  {stage:<32}{seconds:>9.3f} s")
        print(f"  {'run wall time':<32}{wall:>9.3f} s")
        print(f"  {'upstream events per second':<32}{args.records / wall:>9.0f}")
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
