"""`itel-dagster stuck` and `itel-dagster skip`: an operator's view of partitions that do not move,
and the one action that moves a partition past a record by hand.

`stuck` only reads (the Dagster instance and the groups' offsets). `skip` dead-letters exactly
the group's next record, after checking that no run is working on its partition, then commits
past it: the record is on the error topic before the offset moves, never lost.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import click
import dagster as dg

from itel_dagster.kafka.offsets import commit_offsets, group_progress
from itel_dagster.kafka.range_reader import read_range
from itel_dagster.kafka.results_producer import ResultsProducer
from itel_dagster.sensors.dispatch_state import (
    current_plan,
    failure_reason,
    isolation_paused,
    last_runs,
    partitions_in_flight,
)
from itel_dagster.devstack.kafka.broker import configured_or_local_bootstrap_servers as bootstrap_servers
from itel_dagster.settings.paths import state_dir
from itel_dagster.settings.workers import WorkerSettings, load_workers
from itel_dagster.stages.error_records import error_record_messages
from itel_dagster.stages.poison import SKIPPED_BY_OPERATOR, poison_records
from itel_dagster.stages.raw_batch import raw_batch_from_records
from itel_dagster.worker_logs import worker_logger


def dagster_instance() -> dg.DagsterInstance:
    """DAGSTER_HOME's instance, else the local stack's (./var/dagster_home)."""
    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = str(state_dir() / "dagster_home")
    return dg.DagsterInstance.get()


@dataclass(frozen=True)
class PartitionState:
    worker: str
    partition: int
    state: str  # stuck, isolating, retrying, retry pause
    offset: int
    lag: int
    detail: str
    last_error: str | None


def partition_states(instance: dg.DagsterInstance, worker: WorkerSettings,
                     servers: str) -> tuple[list[PartitionState], int]:
    """The worker's partitions that are stuck, isolating a bad record, or pausing after a
    failed run (with the last failed run's error), and the group's total lag."""
    topic = worker.input_topic
    first = group_progress(servers, worker.consumer_group, topic)
    partitions = [p.partition for p in first]
    _, progress, plan = current_plan(
        instance, worker, servers, lambda: group_progress(servers, worker.consumer_group, topic),
        now=time.time(), partitions=partitions)
    runs = last_runs(instance, worker.name, partitions)
    by_partition = {p.partition: p for p in progress}

    def error_of(partition: int) -> str | None:
        last = runs.get(partition)
        if last is None:
            return None
        failed = last.run_id if last.failed else last.failed_run_id
        return failure_reason(instance, failed) if failed else None

    states = []
    for partition, (offset, failures) in sorted(plan.stuck.items()):
        states.append(PartitionState(worker.name, partition, "stuck", offset,
                                     by_partition[partition].lag,
                                     f"{failures} runs failed on it", error_of(partition)))
    for partition, (start, suspect_end) in sorted(plan.isolating.items()):
        states.append(PartitionState(worker.name, partition, "isolating", start,
                                     by_partition[partition].lag,
                                     f"a bad record lies in {start}-{suspect_end}",
                                     error_of(partition)))
    for planned in plan.redispatched:
        r = planned.range
        states.append(PartitionState(worker.name, r.partition, "retrying", r.start,
                                     by_partition[r.partition].lag,
                                     f"{planned.failures_before} run(s) failed on "
                                     f"{r.start}-{r.end}; dispatched again now",
                                     error_of(r.partition)))
    for partition, seconds in sorted(plan.waiting.items()):
        states.append(PartitionState(worker.name, partition, "retry pause",
                                     by_partition[partition].next_offset,
                                     by_partition[partition].lag,
                                     f"dispatched again in {seconds:.0f} s", error_of(partition)))
    return states, sum(p.lag for p in progress)


def _workers(name: str | None) -> list[WorkerSettings]:
    workers = load_workers()
    if name is None:
        return list(workers.values())
    if name not in workers:
        raise click.UsageError(f"unknown worker {name!r}; workers.yaml has {sorted(workers)}")
    return [workers[name]]


@click.command()
@click.option("--worker", help="One worker (default: both).")
def stuck(worker: str | None) -> None:
    """Partitions that do not move: stuck (the dead-letter of a poison record keeps failing),
    isolating (the sensor is halving a range to find a failing record) or pausing after a failed
    run, each with its offset, lag and the last failed run's error."""
    instance = dagster_instance()
    servers = bootstrap_servers()
    for settings in _workers(worker):
        states, lag = partition_states(instance, settings, servers)
        paused = isolation_paused(instance, settings, time.time())
        if paused:
            click.echo(f"{settings.name}: poison isolation paused: {paused} records dead-lettered "
                       "as poison in the last hour (max_poison_per_hour); failing ranges go stuck")
        if not states:
            click.echo(f"{settings.name}: no partition stuck or isolating (lag {lag})")
            continue
        for s in states:
            click.echo(f"{s.worker} {settings.input_topic}[{s.partition}] {s.state.upper()} at "
                       f"offset {s.offset}, lag {s.lag}: {s.detail}")
            if s.last_error:
                click.echo(f"    last error: {s.last_error}")
            if s.state == "stuck":
                click.echo(f"    to move on: itel-dagster skip --worker {s.worker} "
                           f"--partition {s.partition} --offset {s.offset}")


class SkipRefused(click.ClickException):
    pass


def skip_record(instance: dg.DagsterInstance, settings: WorkerSettings, servers: str,
                partition: int, offset: int, note: str | None = None) -> str:
    """Dead-letter the record at `offset` (the group's next one on `partition`) with reason
    "skipped by operator", then commit past it. Returns the record's event_id (or "-")."""
    topic = settings.input_topic
    if partition in partitions_in_flight(instance, settings.name):
        raise SkipRefused(f"a run of {settings.name} is in flight on partition {partition}: wait "
                          "for it to end (or terminate it in the UI), then skip")
    progress = {p.partition: p for p in group_progress(servers, settings.consumer_group, topic)}
    if partition not in progress:
        raise SkipRefused(f"{topic} has no partition {partition}")
    at = progress[partition].next_offset
    if at != offset:
        raise SkipRefused(f"{settings.consumer_group} is at offset {at} on {topic}[{partition}], "
                          f"not {offset}: only the group's next record can be skipped")
    read = read_range(servers, topic, partition, offset, offset + 1)
    if not read.records:
        raise SkipRefused(f"{topic}[{partition}] holds no record at offset {offset}")
    reason = "skipped by operator" + (f": {note}" if note else "")
    dead = poison_records(raw_batch_from_records(read.records), worker=settings.name,
                          reason=reason, error_type=SKIPPED_BY_OPERATOR)
    producer = ResultsProducer(servers, client_id=f"{settings.name}-skip")
    producer.send(settings.error_topic,
                  error_record_messages(dead, settings.error_payload_max_bytes))
    producer.flush()  # on the error topic before the offset moves
    commit_offsets(servers, settings.consumer_group, topic, {partition: offset + 1})
    event_id = dead["event_id"][0] or "-"
    worker_logger(settings).warning(
        "%s[%d] offset %d (event %s) skipped by operator: dead-lettered to %s, committed %d",
        topic, partition, offset, event_id, settings.error_topic, offset + 1)
    return event_id


@click.command()
@click.option("--worker", required=True, help="The worker whose group skips the record.")
@click.option("--partition", type=int, required=True, help="Kafka partition of the record.")
@click.option("--offset", type=int, required=True,
              help="Offset of the record: the group's next one on that partition.")
@click.option("--reason", "note", help="A note added to the error record's reason.")
def skip(worker: str, partition: int, offset: int, note: str | None) -> None:
    """Dead-letter one record by hand (stage poison, reason "skipped by operator") to the
    worker's error topic, then move the worker's group past it. Refused while a run works on the
    partition or when the record is not the group's next one. Replay it later with the
    dead-letter replay job."""
    [settings] = _workers(worker)
    event_id = skip_record(dagster_instance(), settings, bootstrap_servers(), partition, offset,
                           note)
    click.echo(f"{settings.input_topic}[{partition}] offset {offset} (event {event_id}) is on "
               f"{settings.error_topic}; {settings.consumer_group} now at {offset + 1}")
