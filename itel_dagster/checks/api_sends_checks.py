"""Asset check of an API worker's send ledger (`itel_api_sends`): every valid event of a day was
accepted by iTel or dead-lettered (its record on the API error topic, or a rejected /
dead_lettered outcome). Built per worker by the worker factory.

Reads Kafka, the API error topic and the ledger; never sends and never writes.
"""

import dagster as dg

from itel_dagster.checks.day_inputs import (
    dead_letter_coordinates,
    day_rows,
    kafka_days,
    next_offsets,
)
from itel_dagster.checks.day_results import DayCheckConfig, day_check_result, days_of
from itel_dagster.resources.delta_tables import DeltaTablesResource
from itel_dagster.resources.kafka import KafkaResource
from itel_dagster.settings.workers import WorkerSettings, load_workers
from itel_dagster.stages.day_audit import sends


def itel_api_send_checks(worker: WorkerSettings) -> list[dg.AssetChecksDefinition]:
    """The check of one API worker's ledger; it reads the worker's settings when it runs."""

    @dg.asset_check(
        asset=worker.asset, name="every_valid_event_sent_or_dead_lettered", blocking=False,
        description="Every valid event Kafka holds for the day has an accepted send in the ledger or "
        "was dead-lettered (on the API error topic, or rejected / dead_lettered in the ledger). "
        "Events the consumer group has not reached (lag, an open circuit breaker) are pending.")
    def every_valid_event_sent_or_dead_lettered(
        context: dg.AssetCheckExecutionContext, config: DayCheckConfig, kafka: KafkaResource,
        delta: DeltaTablesResource,
    ) -> dg.AssetCheckResult:
        settings = load_workers()[worker.name]
        days = days_of(context, config)
        resume = next_offsets(kafka, settings.consumer_group, settings.input_topic)  # first: see there
        read = kafka_days(kafka, settings.input_topic, days, settings.expected_task_id)
        letters = dead_letter_coordinates(kafka, settings.error_topic, settings.input_topic, days[0])
        columns = {"event_id": "event_id", "outcome": "outcome"}
        return day_check_result([
            sends(day, kafka_records.records, day_rows(delta, settings.table, day, columns), letters,
                  resume, config.sample_size)
            for day, kafka_records in read.items()],
            consumer_group=settings.consumer_group, error_topic=settings.error_topic)

    return [every_valid_event_sent_or_dead_lettered]
