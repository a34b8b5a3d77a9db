"""The in-process limit of a worker: its stage functions and its resources' clients (ClaimX lookup
client, Delta writer, iTel sender, results producer, offset commit) called directly in this one
Python process over the backlog, no Dagster. The ranges are cut by the sensor's own planner.

It works under its own consumer group, success/error topics, Delta root, ClaimX cache and breaker
file, so it never moves the Dagster path's offsets nor pre-fills its cache or tables.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from itel_dagster_bench.stack import PARTITIONS
from itel_dagster.devstack.kafka.topics import ensure_topics, pipeline_topics
from itel_dagster.kafka.offsets import (
    PartitionProgress,
    commit_offsets,
    first_offset_at_or_after,
    group_progress,
    record_timestamp_ms,
)
from itel_dagster.kafka.range_reader import read_range
from itel_dagster.kafka.results_producer import ResultsProducer
from itel_dagster.ops.api_ops import _days, _outcome_frame
from itel_dagster.ops.results_ops import success_messages
from itel_dagster.ops.tracking_ops import _success_frame
from itel_dagster.resources.claimx_api import ClaimxLookupClient
from itel_dagster.resources.delta_tables import DeltaTablesResource
from itel_dagster.resources.itel_api import auth_for, breaker_for
from itel_dagster.resources.itel_sender import ItelSender, SendRequest
from itel_dagster.resources.task_cache import TaskCache
from itel_dagster.sensors.dispatch_plan import KafkaRange, plan_dispatch
from itel_dagster.settings.connections import load_claimx_connection, load_itel_connection
from itel_dagster_bench.seed_workers import API_WORKER, TRACKING_WORKER
from itel_dagster.settings.workers import WorkerSettings, load_workers
from itel_dagster.stages.enrich import apply_lookups
from itel_dagster.stages.error_records import error_record_messages, error_records, stage_failures
from itel_dagster.stages.itel_payload import with_payloads
from itel_dagster.stages.raw_batch import raw_batch_from_records
from itel_dagster.stages.send_ledger import ledger_rows
from itel_dagster.stages.tracking_rows import tracking_rows
from itel_dagster.stages.transform import transform
from itel_dagster.stages.validate import validate

SUFFIX = ".inprocess"


@dataclass
class InProcessResult:
    worker: str
    records: int = 0
    seconds: float = 0.0
    claimx_requests: int = 0
    stage_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @property
    def events_per_second(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


def in_process_settings(settings: WorkerSettings) -> WorkerSettings:
    """The worker with its own group and result topics (same input topic, same everything else)."""
    return settings.model_copy(update={
        "consumer_group": settings.consumer_group + SUFFIX,
        "success_topic": settings.success_topic + SUFFIX,
        "error_topic": settings.error_topic + SUFFIX,
    })


def planned_runs(bootstrap: str, settings: WorkerSettings) -> list[tuple[KafkaRange, ...]]:
    """The runs the sensor would dispatch for this group (their Kafka ranges), one at a time."""
    topic = settings.input_topic
    progress = {p.partition: p for p in group_progress(bootstrap, settings.consumer_group, topic)}
    runs = []
    while True:
        plan = plan_dispatch(
            topic, list(progress.values()), {}, set(), settings.max_records_per_run,
            timestamp_at=lambda p, o: record_timestamp_ms(bootstrap, topic, p, o),
            first_offset_at=lambda p, ms: first_offset_at_or_after(bootstrap, topic, p, ms),
            lanes=settings.lanes,
        )
        if not plan.runs:
            return runs
        for run in plan.runs:
            runs.append(tuple(r.range for r in run.ranges))
            for r in run.ranges:
                old = progress[r.range.partition]
                progress[r.range.partition] = PartitionProgress(old.partition, r.range.end,
                                                                old.low, old.high)


class _Timer:
    def __init__(self, into: dict[str, float]):
        self.into = into

    def __call__(self, stage: str):
        timer = self

        class _Span:
            def __enter__(self):
                self.began = time.perf_counter()

            def __exit__(self, *exc):
                timer.into[stage] += time.perf_counter() - self.began

        return _Span()


class InProcessWorker:
    """One worker's run body, op by op, as plain calls."""

    def __init__(self, bootstrap: str, settings: WorkerSettings, delta_root: Path,
                 state: Path, result: InProcessResult):
        self.bootstrap = bootstrap
        self.settings = settings
        self.result = result
        self.span = _Timer(result.stage_seconds)
        self.delta = DeltaTablesResource(root=str(delta_root))
        claimx = load_claimx_connection()
        self.claimx = ClaimxLookupClient(
            claimx, TaskCache(state / f"claimx_tasks_{settings.name}.sqlite", claimx.cache_ttl_seconds))
        self.tracking_writer = self.delta.writer(settings.delta_table or "itel_cabinet_task_tracking")
        self.ledger_writer = self.delta.writer(load_workers()[API_WORKER].table, key="ledger_key")
        itel = load_itel_connection()
        self.itel = itel
        self.sender = ItelSender(
            itel, breaker_for(itel, state / f"breaker_{settings.name}.sqlite"), auth_for(itel),
            batch_endpoint=itel.batch.endpoint if itel.batch.enabled else None,
            batch_size=itel.batch.size)
        self.producer = ResultsProducer(bootstrap, client_id=f"{settings.name}-bench")

    def run(self, kafka_ranges: tuple[KafkaRange, ...]) -> None:
        s = self.settings
        with self.span("read"):
            records = [record for r in kafka_ranges
                       for record in read_range(self.bootstrap, r.topic, r.partition, r.start,
                                                r.end).records]
            raw = raw_batch_from_records(records)
        with self.span("transform"):
            events = transform(raw, worker=s.name, ingested_at=datetime.now(timezone.utc))
        with self.span("validate"):
            checked = validate(events, expected_task_id=s.expected_task_id)
            errors = [error_records(checked.errors, worker=s.name, stage="validate")]
        rows = checked.valid
        if not rows.is_empty():
            with self.span("claimx_lookup"):
                lookups = self.claimx.lookup(rows["assignment_id"].unique().to_list())
                self.result.claimx_requests += lookups.requests_made
                rows = apply_lookups(rows, {a: (r.status, r.body)
                                            for a, r in lookups.results.items()})
            if s.name == TRACKING_WORKER:
                successes = self._write_tracking(rows)
            else:
                successes, failures = self._send(rows)
                errors.append(failures)
        else:
            successes = rows
        with self.span("publish_and_commit"):
            self.producer.send(s.success_topic, success_messages(successes))
            frames = [e for e in errors if e.height]
            if frames:
                self.producer.send(s.error_topic, error_record_messages(
                    pl.concat(frames, how="diagonal_relaxed")))
            self.producer.flush()
            commit_offsets(self.bootstrap, s.consumer_group, kafka_ranges[0].topic,
                           {r.partition: r.end for r in kafka_ranges})
        self.result.records += len(records)

    def _write_tracking(self, rows: pl.DataFrame) -> pl.DataFrame:
        with self.span("delta_write"):
            written = tracking_rows(rows, self.settings.column_mapping or {})
            result = self.tracking_writer.merge_new_rows(written)
            return _success_frame(rows, self.tracking_writer.uri, result.version)

    def _send(self, rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        with self.span("ledger_check"):
            handled = self.delta.values_present(load_workers()[API_WORKER].table, "event_id",
                                                rows["event_id"].to_list(), _days(rows))
            if handled:
                rows = rows.filter(~pl.col("event_id").is_in(list(handled)))
        with self.span("itel_api_send"):
            rows = with_payloads(rows, self.itel.payload)
            report = self.sender.send([
                SendRequest(event_id=e, assignment_id=a, order=o, payload=p.encode())
                for e, a, o, p in rows.select(
                    "event_id", "assignment_id", "kafka_offset", "request_payload").iter_rows()])
            sent = rows.join(_outcome_frame(report), on="event_id", how="left")
        with self.span("send_ledger"):
            self.ledger_writer.merge_new_rows(ledger_rows(sent, f"bench-{uuid.uuid4().hex}"))
        failed = sent.filter(pl.col("outcome") != "accepted")
        failures = stage_failures(failed, worker=self.settings.name, stage="itel_api_send",
                                  error_type=pl.format("itel_{}", pl.col("outcome")),
                                  reason=pl.lit("not accepted"))
        successes = sent.filter(pl.col("outcome") == "accepted").select(
            "event_id", "assignment_id", "status_code", "itel_id", "latency_ms",
            "kafka_topic", "kafka_partition", "kafka_offset")
        return successes, failures


def run_in_process(bootstrap: str, settings: WorkerSettings, delta_root: Path, state: Path,
                   on_records=lambda n: None) -> InProcessResult:
    """The whole backlog of `settings.input_topic` through the worker; on_records(n) after each
    range (the progress bar)."""
    settings = in_process_settings(settings)
    ensure_topics(bootstrap, pipeline_topics({settings.name: settings}), partitions=PARTITIONS)
    result = InProcessResult(settings.name)
    began = time.perf_counter()
    worker = InProcessWorker(bootstrap, settings, delta_root, state, result)
    for kafka_ranges in planned_runs(bootstrap, settings):
        before = result.records
        worker.run(kafka_ranges)
        on_records(result.records - before)
    result.seconds = time.perf_counter() - began
    result.stage_seconds = dict(result.stage_seconds)
    return result
