"""Records Kafka deleted (retention) before a worker's consumer group handled them.

The read op finds them: offsets between the group's committed offset and the first offset Kafka
still held. The last op reports them once, after the commit moved the group past them: an ERROR
line in the worker's log, the metric itel_records_lost_to_retention_total, an asset observation
(what the check `no_records_lost_to_retention` reads) and a webhook alert. Reporting never fails
the run; the loss is reported, the worker goes on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

import dagster as dg

from itel_dagster.alerts.messages import retention_loss_alert
from itel_dagster.alerts.webhook import post_alert
from itel_dagster.metrics.pipeline_metrics import record_retention_loss
from itel_dagster.sensors.dispatch_plan import KafkaRange
from itel_dagster.settings.alerts import load_alert_settings
from itel_dagster.settings.env_yaml import ConfigError
from itel_dagster.settings.workers import WorkerSettings
from itel_dagster.worker_logs import worker_logger

# Metadata key of the loss observations (the check finds them by it).
LOSS_KEY = "records_lost_to_retention"


def lost_ranges(ranges: Sequence[KafkaRange], first_readable: Mapping[int, int],
                committed: Mapping[int, int | None]) -> tuple[KafkaRange, ...]:
    """Per range, the offsets from where the group stands (its committed offset; the range's
    start for a group that never committed) up to the first offset the run could read."""
    lost = []
    for r in ranges:
        handled_to = committed.get(r.partition)
        since = r.start if handled_to is None else handled_to
        if since < first_readable[r.partition]:
            lost.append(KafkaRange(r.topic, r.partition, since, first_readable[r.partition]))
    return tuple(lost)


def described(lost: KafkaRange) -> str:
    return f"{lost.topic}[{lost.partition}] offsets {lost.start} to {lost.end - 1} ({lost.size} records)"


def report_retention_loss(context: dg.OpExecutionContext, settings: WorkerSettings,
                          lost: Sequence[KafkaRange], moved: Mapping[int, int]) -> dict:
    """Report the lost ranges whose partition the commit just moved (`moved`: partition -> new
    offset); a retried run whose commit moves nothing reports nothing again. Returns the
    run-metadata entries."""
    reported = [r for r in lost if r.partition in moved]
    if not reported:
        return {}
    log = worker_logger(settings)
    for r in reported:
        log.error("%s lost to retention: Kafka deleted them before %s handled them; offsets "
                  "committed past them", described(r), settings.consumer_group)
    try:
        _report(context, settings, reported, log)
    except Exception as exc:  # noqa: BLE001 - the commit is done; the ERROR lines said it
        log.warning("retention loss not fully reported: %s: %s", type(exc).__name__, exc)
    return {LOSS_KEY: sum(r.size for r in reported),
            "lost_offsets": ", ".join(described(r) for r in reported)}


def _report(context: dg.OpExecutionContext, settings: WorkerSettings,
            reported: Sequence[KafkaRange], log) -> None:
    """The metric, the observation the check reads, the alert."""
    total = sum(r.size for r in reported)
    record_retention_loss(settings, total, log)
    ranges = [{"topic": r.topic, "partition": r.partition, "first_offset": r.start,
               "last_offset": r.end - 1, "records": r.size} for r in reported]
    # On the worker's asset (the live job is an op job, not the asset), partitioned by the day
    # the loss was found: the lost records' own days are unknown.
    context.log_event(dg.AssetObservation(
        asset_key=settings.asset,
        partition=datetime.now(timezone.utc).date().isoformat(),
        metadata={LOSS_KEY: total, "lost_offsets": dg.MetadataValue.json(ranges),
                  "worker": settings.name, "consumer_group": settings.consumer_group}))
    _alert(context, settings, reported, log)


def _alert(context: dg.OpExecutionContext, settings: WorkerSettings,
           reported: Sequence[KafkaRange], log) -> None:
    try:
        alerts = load_alert_settings()
    except ConfigError as exc:
        log.warning("retention-loss alert not sent: alerts.yaml unusable: %s", exc)
        return
    alert = retention_loss_alert(
        worker=settings.name, consumer_group=settings.consumer_group,
        records=sum(r.size for r in reported), lost=[described(r) for r in reported],
        run_url=alerts.run_url(context.run_id))
    delivery = post_alert(alerts, alert)  # never raises
    log.info("retention-loss alert %s", delivery.detail)
