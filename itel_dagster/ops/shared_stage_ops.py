"""The stages every worker shares, as ops: the two reads (a live micro-batch's Kafka range, a
backfill's whole days), transform, validate, ClaimX lookup.

One definition serves every worker: the worker comes from the run config of `read_kafka_range`
(the live job), or from the asset being materialized (`read_kafka_days`, the asset's backfill).
A bad record becomes an error row here; no op raises because of a record's content.
"""


from datetime import date, datetime, timezone

import dagster as dg

from itel_dagster.crash_points import crash_point
from itel_dagster.ops.retention_loss import lost_ranges
from itel_dagster.ops.stage_batch import StageBatch
from itel_dagster.resources.claimx_api import ClaimxApiResource
from itel_dagster.resources.kafka import KafkaResource
from itel_dagster.sensors.dispatch_plan import KafkaRange
from itel_dagster.stages.enrich import apply_lookups
from itel_dagster.stages.no_enrichment import not_enriched
from itel_dagster.stages.error_records import error_records
from itel_dagster.stages.poison import poison_records
from itel_dagster.stages.raw_batch import raw_batch_from_records
from itel_dagster.stages.transform import transform
from itel_dagster.stages.validate import validate
from itel_dagster.kafka.day_window import day_bounds_ms
from itel_dagster.settings.workers import load_workers, worker_of_asset
from itel_dagster.worker_logs import worker_logger

STAGE_IO = "stage_io_manager"  # in memory: batches never leave the run process


class PartitionRangeConfig(dg.Config):
    """Offsets [start, end) of one Kafka partition."""

    partition: int
    start: int
    end: int


class KafkaRangeConfig(dg.Config):
    """The work of one live run: a sensor's micro-batch names a worker, the topic and one offset
    range per Kafka partition it covers. (A day is rebuilt by materializing the worker's asset,
    not by this job.)

    partition/start/end: one range, as runs dispatched by earlier versions name it (re-executing
    such a run from the UI still works)."""

    worker: str
    topic: str
    ranges: list[PartitionRangeConfig] | None = None
    partition: int | None = None
    start: int | None = None
    end: int | None = None
    # Set by the sensor's poison isolation: the range's records are not processed but
    # dead-lettered (stage poison) with this reason, and the offsets committed past them.
    dead_letter_reason: str | None = None

    def kafka_ranges(self) -> tuple[KafkaRange, ...]:
        if self.ranges:
            if None not in (self.partition, self.start, self.end):
                raise dg.Failure("give either ranges or partition/start/end, not both")
            ranges = [KafkaRange(self.topic, r.partition, r.start, r.end) for r in self.ranges]
        elif None not in (self.partition, self.start, self.end):
            ranges = [KafkaRange(self.topic, self.partition, self.start, self.end)]
        else:
            raise dg.Failure("a Kafka micro-batch needs ranges (partition, start, end each); to "
                             "rebuild a day, materialize the worker's asset for that partition")
        partitions = [r.partition for r in ranges]
        if len(set(partitions)) != len(partitions):
            raise dg.Failure(f"one range per partition, got partitions {partitions}")
        for r in ranges:
            if r.start < 0 or r.end < r.start:
                raise dg.Failure(f"{r.topic}[{r.partition}] {r.start}-{r.end} is not a range")
        return tuple(sorted(ranges, key=lambda r: r.partition))


BACKFILL_READ_CHUNK = 20_000  # records held at once beyond the day's own

def _retry_policy() -> dg.RetryPolicy:
    # Transient I/O (broker restart, network blip) is retried in the op; content errors never
    # raise. Run retries (workers.yaml retry_policy) cover the process dying.
    return dg.RetryPolicy(max_retries=2, delay=1, backoff=dg.Backoff.EXPONENTIAL,
                          jitter=dg.Jitter.FULL)


def _read_micro_batch(config: KafkaRangeConfig, kafka: KafkaResource) -> StageBatch:
    if config.worker not in load_workers():
        raise dg.Failure(f"unknown worker {config.worker!r}; workers.yaml has {sorted(load_workers())}")
    settings = load_workers()[config.worker]
    kafka_ranges = config.kafka_ranges()
    records, missing, value_bytes, fetches = [], 0, 0, 0
    # partition -> first offset not read, where max_bytes_per_run or the log's end stopped a read.
    read_until: dict[int, int] = {}
    # partition -> the first offset the run could read (above the range's start: retention).
    first_readable: dict[int, int] = {}
    maybe_lost = False  # whether records before a range may have been lost to retention
    for r in kafka_ranges:
        budget = settings.max_bytes_per_run - value_bytes
        if records and budget <= 0:
            read_until[r.partition] = first_readable[r.partition] = r.start
            maybe_lost = True  # unread: its log start is unknown
            continue
        read = kafka.read_range(r.topic, r.partition, r.start, r.end,
                                stall_seconds=settings.read_stall_seconds, max_bytes=budget,
                                first_record_always=not records, fetch_records=settings.batch_size)
        first_readable[r.partition] = max(r.start, read.log_start)
        # A range at the log start may begin where the sensor found the group below it.
        maybe_lost = maybe_lost or r.start <= read.log_start
        if read.stopped_at is not None:
            read_until[r.partition] = read.stopped_at
        gaps = read.missing_offsets - (first_readable[r.partition] - r.start)
        if gaps:
            worker_logger(settings).warning(
                "%s[%d] %d..%d: %d offsets missing inside the range (compaction or transaction "
                "markers)", r.topic, r.partition, r.start, r.end, gaps)
        records.extend(read.records)
        value_bytes += read.value_bytes
        missing += read.missing_offsets
        fetches += read.fetches
    lost = ()
    if maybe_lost:
        committed = {p.partition: p.committed
                     for p in kafka.progress(settings.consumer_group, kafka_ranges[0].topic)}
        lost = lost_ranges(kafka_ranges, first_readable, committed)
    if read_until:
        worker_logger(settings).info(
            "read %d bytes of values (max_bytes_per_run %d); stopped at the byte budget or the "
            "log's end, the rest stays in Kafka from %s", value_bytes, settings.max_bytes_per_run,
            ", ".join(f"{p}:{o}" for p, o in sorted(read_until.items())))
    return StageBatch(
        worker=config.worker,
        kafka_ranges=kafka_ranges,
        rows=raw_batch_from_records(records),
        missing_offsets=missing,
        counts={"read": len(records), "read_bytes": value_bytes, "kafka_fetches": fetches},
        read_until=read_until or None,
        lost_to_retention=lost,
    )


def _read_days(context: dg.OpExecutionContext, kafka: KafkaResource) -> StageBatch:
    """A backfill run: every record Kafka holds of the run's day partition(s)."""
    # Which worker the backfill works for: the asset it materializes says.
    asset = context.assets_def.key.to_user_string() if context.has_assets_def else None
    settings = worker_of_asset(asset) if asset else None
    if settings is None or not context.has_partitions:
        assets = sorted(w.asset for w in load_workers().values())
        raise dg.Failure("read_kafka_days rebuilds day partitions of one of "
                         f"{assets}: materialize the asset for partitions")
    records, missing, windows = [], 0, {}
    for key in context.partition_keys:
        day = date.fromisoformat(key)
        first_ms, next_ms = day_bounds_ms(day)
        windows[day] = tuple(kafka.day_windows(settings.input_topic, day))
        for window in windows[day]:
            # Producers stamp events with their own time, so records of the day can follow the
            # next day's first offset: read to the end, keep the day's, a chunk at a time.
            for start in range(window.start, window.high, BACKFILL_READ_CHUNK):
                end = min(start + BACKFILL_READ_CHUNK, window.high)
                read = kafka.read_range(settings.input_topic, window.partition, start, end)
                records.extend(r for r in read.records if first_ms <= r.timestamp_ms < next_ms)
                missing += read.missing_offsets
    batch = StageBatch(
        worker=settings.name,
        kafka_ranges=(KafkaRange(settings.input_topic, -1, 0, 0),),
        rows=raw_batch_from_records(records),
        missing_offsets=missing,
        counts={"read": len(records)},
        mode="backfill",
        day_windows=windows,
        described_as=f"{settings.input_topic} days " + "; ".join(
            f"{day} (" + ", ".join(f"{w.partition}:{w.start}-{w.end}" for w in day_windows) + ")"
            for day, day_windows in sorted(windows.items())),
    )
    worker_logger(settings).info("backfill of %s: %d records in Kafka, %s", asset, len(records),
                                 batch.source)
    return batch


def _dead_lettered(batch: StageBatch, reason: str) -> StageBatch:
    """The whole batch as poison error records: no stage sees them, the last op publishes them
    to the error topic and commits past them."""
    poison = poison_records(batch.rows, worker=batch.worker, reason=reason)
    worker_logger(batch.settings).error(
        "%s: %d record(s) dead-lettered to %s as poison: %s", batch.source, poison.height,
        batch.settings.error_topic, reason)
    return batch.next(raw_batch_from_records([]), poison, poison=poison.height)


def _read_reported(context: dg.OpExecutionContext, batch: StageBatch) -> StageBatch:
    crash_point("after_read", batch.worker)
    context.add_output_metadata({"mode": batch.mode, "source": batch.source,
                                 "records": batch.counts["read"],
                                 "missing_offsets": batch.missing_offsets})
    return batch


@dg.op(out=dg.Out(io_manager_key=STAGE_IO), retry_policy=_retry_policy(), tags={"stage": "read"})
def read_kafka_range(
    context: dg.OpExecutionContext, config: KafkaRangeConfig, kafka: KafkaResource
) -> StageBatch:
    """The live job's read: the sensor's Kafka ranges (or, for a range that kept failing, its
    records as poison error records)."""
    batch = _read_micro_batch(config, kafka)
    if config.dead_letter_reason is not None:
        batch = _dead_lettered(batch, config.dead_letter_reason)
    return _read_reported(context, batch)


@dg.op(out=dg.Out(io_manager_key=STAGE_IO), retry_policy=_retry_policy(), tags={"stage": "read"})
def read_kafka_days(context: dg.OpExecutionContext, kafka: KafkaResource) -> StageBatch:
    """The asset's read (a backfill, Materialize in the UI): every record of the run's day
    partitions that Kafka still holds."""
    return _read_reported(context, _read_days(context, kafka))


@dg.op(out=dg.Out(io_manager_key=STAGE_IO), tags={"stage": "transform"})
def transform_events(context: dg.OpExecutionContext, batch: StageBatch) -> StageBatch:
    events = transform(batch.rows, worker=batch.worker, ingested_at=datetime.now(timezone.utc))
    return batch.next(events)


@dg.op(out=dg.Out(io_manager_key=STAGE_IO), tags={"stage": "validate"})
def validate_events(context: dg.OpExecutionContext, batch: StageBatch) -> StageBatch:
    settings = batch.settings
    result = validate(batch.rows, expected_task_id=settings.expected_task_id)
    if result.errors.height:
        kinds = result.errors.group_by("error_type").len().sort("error_type").rows()
        worker_logger(settings).warning(
            "%d invalid records go to %s: %s", result.errors.height, settings.error_topic,
            ", ".join(f"{kind}={n}" for kind, n in kinds))
    context.add_output_metadata({"valid": result.valid.height, "invalid": result.errors.height})
    return batch.next(
        result.valid,
        error_records(result.errors, worker=batch.worker, stage="validate"),
        valid=result.valid.height,
        invalid=result.errors.height,
    )


@dg.op(out=dg.Out(io_manager_key=STAGE_IO), tags={"stage": "claimx_lookup"})
def skip_claimx_lookup(context: dg.OpExecutionContext, batch: StageBatch) -> StageBatch:
    """For a worker whose stages leave out claimx_lookup: no ClaimX request, no task details."""
    context.add_output_metadata({"claimx_requests": 0})
    return batch.next(not_enriched(batch.rows), claimx_requests=0)


@dg.op(out=dg.Out(io_manager_key=STAGE_IO), retry_policy=_retry_policy(),
       tags={"stage": "claimx_lookup"})
def claimx_lookup(
    context: dg.OpExecutionContext, batch: StageBatch, claimx: ClaimxApiResource
) -> StageBatch:
    if batch.rows.is_empty():
        return batch
    assignment_ids = batch.rows["assignment_id"].unique().to_list()
    lookups = claimx.lookup(assignment_ids)
    if lookups.warning:
        worker_logger(batch.settings).warning(lookups.warning)  # one warning per batch
    enriched = apply_lookups(batch.rows, {a: (r.status, r.body) for a, r in lookups.results.items()})
    statuses = dict(enriched.group_by("enrichment_status").len().rows())
    context.add_output_metadata({
        "distinct_assignments": len(assignment_ids),
        "claimx_requests": lookups.requests_made,
        "cache_hits": lookups.cache_hits,
        **{f"enrichment_{status}": n for status, n in statuses.items()},
    })
    return batch.next(enriched, claimx_requests=lookups.requests_made,
                      claimx_cache_hits=lookups.cache_hits,
                      **{f"enrichment_{status}": n for status, n in statuses.items()})
