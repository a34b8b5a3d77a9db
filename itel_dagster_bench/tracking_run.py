"""One tracking-worker run over N records (default 10,000) on a fresh local broker, the ClaimX
simulator (20 ms added latency) and Delta on disk: records per second, the run's wall time split
by stage, and ClaimX requests per event. Prints figures; asserts nothing.

    python -m itel_dagster_bench.tracking_run [--records 10000] [--claimx-latency-ms 20]
        [--record-kb 250 --max-bytes-per-run 32000000]

--record-kb pads each event's task.technician_notes so the record is about that large (the
largest valid record is 256 KiB); --max-bytes-per-run sets the worker's budget for the run (a
copy of config/), so the run reads only what fits in it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import httpx
import orjson
import yaml
from confluent_kafka import Producer

from itel_dagster.devstack.kafka.broker import LocalKafkaBroker
from itel_dagster.devstack.kafka.topics import ensure_topics, pipeline_topics
from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster.kafka.client_config import client_config
from itel_dagster.metrics.process_memory import peak_rss_mb, reset_peak_rss
from itel_dagster.sensors.dispatch_plan import KafkaRange, PlannedRange, PlannedRun
from itel_dagster.sensors.kafka_worker_sensor import partition_key_for, range_run_config, run_tags
from itel_dagster.settings.paths import config_dir
from itel_dagster_bench.seed_workers import TRACKING_WORKER
from itel_dagster.settings.workers import WORKERS_FILE, load_workers


def padded(value: bytes, record_bytes: int) -> bytes:
    """The event with its task's technician_notes grown so the record is about record_bytes."""
    event = orjson.loads(value)
    notes = event["task"].get("technician_notes") or ""
    event["task"]["technician_notes"] = notes + "n" * max(0, record_bytes - len(value))
    return orjson.dumps(event)


def publish_one_day(bootstrap: str, topic: str, count: int, record_bytes: int = 0) -> date:
    """`count` records inside yesterday (UTC), on partition 0, so one run holds them all."""
    midnight = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    producer = Producer(client_config(bootstrap, **{"linger.ms": 20, "acks": "all"}))
    for record in generate_records(count=count, seed=3, days=0.9, now=midnight - timedelta(hours=1)):
        value = padded(record.value, record_bytes) if record_bytes else record.value
        producer.produce(topic, key=record.key, value=value, timestamp=record.timestamp_ms,
                         partition=0)
        producer.poll(0)
    producer.flush(120)
    return (midnight - timedelta(days=1)).date()


def stage_seconds(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    started: dict[str, float] = {}
    spent: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or not event.step_key:
            continue
        stage = event.step_key.rsplit(".", 1)[-1]
        if event.event_type_value == "STEP_START":
            started[stage] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and stage in started:
            spent[stage] = entry.timestamp - started[stage]
    return spent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_claimx(latency_ms: float) -> tuple[subprocess.Popen, str]:
    """The simulator in its own process, as in `up`: in this one it would share the GIL with the
    run and measure itself, not the pipeline."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "itel_dagster.cli", "simulators", "run", "--claimx-port", str(port),
         "--itel-port", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(f"{url}/_admin/health").raise_for_status()
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    httpx.post(f"{url}/_admin/faults", json={"latency_ms": latency_ms}).raise_for_status()
    return process, url


def with_max_bytes_per_run(config: Path, max_bytes: int) -> None:
    """A copy of config/ whose workers have this max_bytes_per_run, used from now on."""
    shutil.copytree(config_dir(), config)
    path = config / WORKERS_FILE
    data = yaml.safe_load(path.read_text())
    for settings in data["workers"].values():
        settings["max_bytes_per_run"] = max_bytes
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    os.environ["ITEL_CONFIG_DIR"] = str(config)


def main() -> None:
    parser = argparse.ArgumentParser(description="Time one tracking-worker run.")
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--claimx-latency-ms", type=float, default=20.0)
    parser.add_argument("--record-kb", type=float, default=0,
                        help="pad each record to about this many KB (0: as generated, ~0.8 KB)")
    parser.add_argument("--max-bytes-per-run", type=int, default=None,
                        help="the worker's max_bytes_per_run for this run (default: workers.yaml)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="itel-bench-"))
    broker = LocalKafkaBroker(work / "kafka", port=0)
    claimx, claimx_url = start_claimx(args.claimx_latency_ms)
    try:
        bootstrap = broker.start().bootstrap_servers
        os.environ.update(
            KAFKA_BOOTSTRAP_SERVERS=bootstrap, CLAIMX_API_BASE_URL=claimx_url,
            CLAIMX_API_TOKEN="claimx-dev-token", ITEL_DELTA_ROOT=str(work / "delta"),
            ITEL_STATE_DIR=str(work / "var"),
        )
        if args.max_bytes_per_run is not None:
            with_max_bytes_per_run(work / "config", args.max_bytes_per_run)
        worker = load_workers()[TRACKING_WORKER]
        ensure_topics(bootstrap, pipeline_topics(load_workers()), partitions=1)
        day = publish_one_day(bootstrap, worker.input_topic, args.records,
                              int(args.record_kb * 1000))
        httpx.delete(f"{claimx_url}/_admin/stats").raise_for_status()
        reset_peak_rss()  # the peak printed below is the run's, not the publishing's

        from itel_dagster.definitions import defs

        planned = PlannedRun((PlannedRange(KafkaRange(worker.input_topic, 0, 0, args.records), day),))
        job = defs.resolve_job_def("itel_cabinet_tracking_job")
        with dg.instance_for_test() as instance:
            began = time.perf_counter()
            result = job.execute_in_process(
                run_config=range_run_config(worker, planned, "itel_cabinet_task_tracking"),
                partition_key=partition_key_for(day), tags=run_tags(worker, planned),
                instance=instance,
            )
            wall = time.perf_counter() - began
            stages = stage_seconds(instance, result.run_id)
        stats = httpx.get(f"{claimx_url}/_admin/stats").json()
        gets = stats["routes"].get("GET /api/v1/tasks/{assignment_id}", {}).get("total", 0)
        metadata = {k: getattr(v, "value", v) for e in result.get_asset_materialization_events()
                    for k, v in e.materialization.metadata.items()}
        print(f"\ntracking run over {metadata.get('records', '?')} of {args.records} records, "
              f"{metadata.get('read_bytes', 0) / 1e6:.1f} MB of values (success={result.success})")
        for stage, seconds in stages.items():
            print(f"  {stage:<32}{seconds:>9.3f} s")
        print(f"  {'run wall time':<32}{wall:>9.3f} s")
        print(f"  {'records per second':<32}{args.records / wall:>9.0f}")
        print(f"  {'ClaimX requests per event':<32}{gets / args.records:>9.3f}")
        print(f"  {'peak RSS of this process':<32}{peak_rss_mb() or float('nan'):>9.0f} MB")
    finally:
        claimx.terminate()
        claimx.wait(10)
        broker.stop()


if __name__ == "__main__":
    main()
