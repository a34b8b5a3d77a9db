"""The stages both workers share, as ops: read the Kafka range, transform, validate, ClaimX lookup.

One definition serves both workers: the worker comes from the run config of `read_kafka_range`.
A bad record becomes an error row here; no op raises because of a record's content.
"""


from datetime import datetime, timezone

import dagster as dg

from itel_dagster.ops.stage_batch import StageBatch
from itel_dagster.resources.claimx_api import ClaimxApiResource
from itel_dagster.resources.kafka import KafkaResource
from itel_dagster.sensors.dispatch_plan import KafkaRange
from itel_dagster.stages.enrich import apply_lookups
from itel_dagster.stages.error_records import error_records
from itel_dagster.stages.raw_batch import raw_batch_from_records
from itel_dagster.stages.transform import transform
from itel_dagster.stages.validate import validate
from itel_dagster.settings.workers import load_workers
from itel_dagster.worker_logs import worker_logger

STAGE_IO = "stage_io_manager"  # in memory: batches never leave the run process


class KafkaRangeConfig(dg.Config):
    """The work of one run: a worker and one Kafka partition's offset range [start, end)."""

    worker: str
    topic: str
    partition: int
    start: int
    end: int


def _retry_policy() -> dg.RetryPolicy:
    # Transient I/O (broker restart, network blip) is retried in the op; content errors never
    # raise. Run retries (workers.yaml retry_policy) cover the process dying.
    return dg.RetryPolicy(max_retries=2, delay=1, backoff=dg.Backoff.EXPONENTIAL,
                          jitter=dg.Jitter.FULL)


@dg.op(out=dg.Out(io_manager_key=STAGE_IO), retry_policy=_retry_policy(), tags={"stage": "read"})
def read_kafka_range(
    context: dg.OpExecutionContext, config: KafkaRangeConfig, kafka: KafkaResource
) -> StageBatch:
    if config.worker not in load_workers():
        raise dg.Failure(f"unknown worker {config.worker!r}; workers.yaml has {sorted(load_workers())}")
    kafka_range = KafkaRange(config.topic, config.partition, config.start, config.end)
    read = kafka.read_range(config.topic, config.partition, config.start, config.end)
    if read.missing_offsets:
        worker_logger(load_workers()[config.worker]).warning(
            "%s[%d] %d..%d: %d offsets no longer in Kafka (retention)", config.topic,
            config.partition, config.start, config.end, read.missing_offsets)
    context.add_output_metadata({"records": len(read.records), "missing_offsets": read.missing_offsets})
    return StageBatch(
        worker=config.worker,
        kafka_range=kafka_range,
        rows=raw_batch_from_records(read.records),
        missing_offsets=read.missing_offsets,
        counts={"read": len(read.records)},
    )


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
