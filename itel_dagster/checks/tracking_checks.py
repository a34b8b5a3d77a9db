"""Asset checks of a Delta-writing worker's table (`itel_cabinet_task_tracking`): one row per
event_id per day, every Kafka record of a day in the table or dead-lettered, and freshness
(nothing waiting, or written recently). Built per worker by the worker factory.

They read Kafka, the error topic and the table, and never change any of them.
"""

from datetime import datetime, timezone

import dagster as dg
from pydantic import Field

from itel_dagster.checks.day_inputs import (
    dead_letter_coordinates,
    day_rows,
    kafka_days,
    newest_value,
    next_offsets,
)
from itel_dagster.checks.day_results import DayCheckConfig, day_check_result, days_of
from itel_dagster.resources.delta_tables import DeltaTablesResource
from itel_dagster.resources.kafka import KafkaResource
from itel_dagster.settings.workers import WorkerSettings, load_workers
from itel_dagster.stages.day_audit import completeness, freshness, uniqueness


def _tracking(worker: str) -> tuple[WorkerSettings, str, dict[str, str]]:
    """The worker's settings, its table, and pipeline field -> table column (column_mapping)."""
    settings = load_workers()[worker]
    columns = {source: column for column, source in (settings.column_mapping or {}).items()}
    return settings, settings.table, columns


class FreshnessConfig(dg.Config):
    freshness_minutes: float = Field(
        15, ge=0, description="Fresh when the consumer group has no lag, or the newest row was "
        "ingested at most this many minutes ago.")


def delta_write_checks(settings: WorkerSettings) -> list[dg.AssetChecksDefinition]:
    """The checks of one Delta-writing worker's table; they read its settings when they run."""
    name = settings.name

    @dg.asset_check(
        asset=settings.asset, name="event_id_unique_per_day", blocking=False,
        description="Each day partition holds at most one row per event_id (exactly-once writes).")
    def event_id_unique_per_day(context: dg.AssetCheckExecutionContext, config: DayCheckConfig,
                                delta: DeltaTablesResource) -> dg.AssetCheckResult:
        _, table, _ = _tracking(name)
        return day_check_result([
            uniqueness(day, day_rows(delta, table, day, {"event_id": "event_id"}), config.sample_size)
            for day in days_of(context, config)])

    @dg.asset_check(
        asset=settings.asset, name="complete_per_day", blocking=False,
        description="Every record Kafka holds for the day is accounted for: its event has a row of "
        "the day, or it is on the worker's error topic (each record once, also when a replay later "
        "wrote it). Records the consumer group has not reached are pending, not missing. Rows of "
        "records Kafka still holds that are not valid events of the day are reported (WARN).")
    def complete_per_day(context: dg.AssetCheckExecutionContext, config: DayCheckConfig,
                         kafka: KafkaResource, delta: DeltaTablesResource) -> dg.AssetCheckResult:
        settings, table, columns = _tracking(name)
        days = days_of(context, config)
        # Progress first: a record below the committed offset had its row or error record durable
        # before the commit, so the reads after this one find it.
        resume = next_offsets(kafka, settings.consumer_group, settings.input_topic)
        read = kafka_days(kafka, settings.input_topic, days, settings.expected_task_id)
        letters = dead_letter_coordinates(kafka, settings.error_topic, settings.input_topic, days[0])
        wanted = {"event_id": "event_id", "kafka_partition": columns.get("kafka_partition"),
                  "kafka_offset": columns.get("kafka_offset")}
        return day_check_result([
            completeness(day, kafka_records.records, day_rows(delta, table, day, wanted), letters,
                         resume, kafka_records.held, config.sample_size)
            for day, kafka_records in read.items()],
            consumer_group=settings.consumer_group, error_topic=settings.error_topic)

    @dg.asset_check(
        asset=settings.asset, name="freshness", blocking=False,
        description="Fresh when the tracking worker's consumer group has nothing waiting (lag 0) or "
        "the newest row was ingested within freshness_minutes (WARN otherwise).")
    def tracking_freshness(config: FreshnessConfig, kafka: KafkaResource,
                           delta: DeltaTablesResource) -> dg.AssetCheckResult:
        settings, table, columns = _tracking(name)
        lags = {p.partition: p.lag for p in kafka.progress(settings.consumer_group,
                                                           settings.input_topic)}
        ingested = columns.get("ingested_at")
        newest = newest_value(delta, table, ingested) if ingested else None
        facts = freshness(sum(lags.values()), newest, datetime.now(timezone.utc),
                          config.freshness_minutes)
        metadata = {
            "lag": facts.lag,
            "lag_by_partition": {str(p): lag for p, lag in sorted(lags.items())},
            "freshness_minutes": facts.freshness_minutes,
            "newest_ingested_at": facts.newest_ingested_at or "no rows",
            "consumer_group": settings.consumer_group,
        }
        if facts.age_minutes is not None:
            metadata["age_minutes"] = facts.age_minutes
        if facts.passed:
            description = "nothing waiting in Kafka" if facts.lag == 0 else \
                f"{facts.lag} records waiting, newest row {facts.age_minutes} minutes old"
        else:
            age = "no rows yet" if facts.age_minutes is None else \
                f"newest row {facts.age_minutes} minutes old"
            description = (f"{facts.lag} records waiting in Kafka and {age} "
                           f"(limit {facts.freshness_minutes} minutes)")
        return dg.AssetCheckResult(passed=facts.passed,
                                   severity=dg.AssetCheckSeverity(facts.severity),
                                   description=description, metadata=metadata)

    return [event_id_unique_per_day, complete_per_day, tracking_freshness]
