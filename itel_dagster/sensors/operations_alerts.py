"""Operations alerts between runs: the iTel circuit breaker opening (and closing again), and a
worker's consumer lag staying above a threshold (and recovering). One alert per episode; the
episodes live in the sensor's cursor.

Never fails a tick: a webhook problem is logged, and a check that cannot read its source (Kafka,
the iTel settings) is named in the skip reason while the other checks still run. The Kafka
cluster and the iTel connection are the code location's resources, injected by Dagster.
"""

import time
from datetime import datetime, timezone

import dagster as dg

from itel_dagster.alerts.episodes import CLOSED, HIGH, OPENED, AlertCursor, breaker_events, lag_event
from itel_dagster.alerts.messages import (
    Alert,
    breaker_closed_alert,
    breaker_open_alert,
    lag_alert,
    lag_recovered_alert,
)
from itel_dagster.alerts.webhook import NOT_CONFIGURED, post_alert
from itel_dagster.kafka.offsets import kept_group_progress
from itel_dagster.resources.circuit_breaker import CLOSED as BREAKER_CLOSED
from itel_dagster.resources.circuit_breaker import until_text
from itel_dagster.resources.itel_api import ItelApiResource
from itel_dagster.resources.kafka import KafkaResource
from itel_dagster.settings.alerts import AlertSettings, load_alert_settings
from itel_dagster.settings.env_yaml import ConfigError
from itel_dagster.settings.workers import ITEL_API_SEND, load_workers, workers_with_final_stage

SENSOR_NAME = "itel_operations_alerts"
INTERVAL_SECONDS = 30
# Per Kafka call: with the broker down, both workers' checks stay well inside the 60 s a sensor
# evaluation may take.
KAFKA_TIMEOUT_SECONDS = 5.0


def _utc(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="seconds")


def breaker_alerts(settings: AlertSettings, cursor: AlertCursor,
                   itel: ItelApiResource) -> tuple[list[Alert], list[str]]:
    """Alerts due for the iTel breaker, and a note for the skip reason."""
    if itel.not_configured:
        return [], ["breaker: iTel connection not configured"]
    state = itel.breaker().state()
    # The breaker guards every worker that sends to iTel.
    senders = ", ".join(w.name for w in workers_with_final_stage(ITEL_API_SEND)) or "iTel"
    alerts = []
    for event in breaker_events(cursor, state.state == BREAKER_CLOSED, state.opened_count):
        if event == OPENED:
            alerts.append(breaker_open_alert(
                consecutive_failures=state.consecutive_failures, opened_at=_utc(state.opened_at),
                reopens_at=until_text(state.reopens_at), openings_total=state.opened_count,
                worker=senders, ui_base_url=settings.ui_base_url, cause=state.cause))
        elif event == CLOSED and settings.circuit_breaker.notify_recovered:
            alerts.append(breaker_closed_alert(worker=senders, ui_base_url=settings.ui_base_url))
    return alerts, [f"breaker {state.state}"]


def lag_alerts(settings: AlertSettings, cursor: AlertCursor, now: float,
               kafka: KafkaResource) -> tuple[list[Alert], list[str]]:
    """Alerts due for each worker's consumer lag, and one note per worker."""
    rule = settings.lag
    alerts, notes = [], []
    servers = kafka.settings()
    for worker in load_workers().values():
        try:
            progress = kept_group_progress(servers, worker.consumer_group, worker.input_topic,
                                           timeout=KAFKA_TIMEOUT_SECONDS)
        except Exception as exc:  # noqa: BLE001 - one unreadable group must not hide the rest
            notes.append(f"{worker.name} lag unknown ({type(exc).__name__}: {exc})")
            continue
        lag = sum(p.lag for p in progress)
        notes.append(f"{worker.name} lag {lag}")
        event = lag_event(cursor, worker.name, lag, rule.threshold, rule.for_seconds, now)
        if event == HIGH:
            alerts.append(lag_alert(
                worker=worker.name, consumer_group=worker.consumer_group, topic=worker.input_topic,
                lag=lag, lag_by_partition={p.partition: p.lag for p in progress},
                threshold=rule.threshold, above_since=_utc(cursor.lag[worker.name].above_since),
                for_seconds=rule.for_seconds, ui_base_url=settings.ui_base_url))
        elif event is not None and rule.notify_recovered:
            alerts.append(lag_recovered_alert(
                worker=worker.name, consumer_group=worker.consumer_group, topic=worker.input_topic,
                lag=lag, threshold=rule.threshold, ui_base_url=settings.ui_base_url))
    return alerts, notes


@dg.sensor(
    name=SENSOR_NAME,
    minimum_interval_seconds=INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Alerts ALERT_WEBHOOK_URL once when the iTel circuit breaker opens and when a "
    "worker's consumer lag stays above the threshold of alerts.yaml (and when either recovers).",
)
def itel_operations_alerts(context: dg.SensorEvaluationContext, kafka: KafkaResource,
                           itel: ItelApiResource) -> dg.SensorResult:
    try:
        settings = load_alert_settings()
    except ConfigError as exc:
        context.log.error(str(exc))
        return dg.SensorResult(skip_reason=f"alerts.yaml unusable: {exc}", cursor=context.cursor)
    cursor = AlertCursor.from_json(context.cursor)
    notes: list[str] = []
    due: list[Alert] = []
    checks = []
    if settings.circuit_breaker.enabled:
        checks.append(("breaker", lambda: breaker_alerts(settings, cursor, itel)))
    if settings.lag.enabled:
        checks.append(("lag", lambda: lag_alerts(settings, cursor, time.time(), kafka)))
    for name, check in checks:
        try:
            alerts, told = check()
        except Exception as exc:  # noqa: BLE001 - the other checks still run
            context.log.warning(f"{name} check failed: {type(exc).__name__}: {exc}")
            notes.append(f"{name} check failed ({type(exc).__name__}: {exc})")
            continue
        due.extend(alerts)
        notes.extend(told)
    for alert in due:
        delivery = post_alert(settings, alert)
        log = context.log.info if delivery.sent else context.log.warning
        log(f"{alert.kind}: {alert.title}: {delivery.detail}")
        notes.append(f"{alert.kind} alert {delivery.detail}")
    if settings.webhook_url is None:
        notes.append(f"alerts off ({NOT_CONFIGURED})")
    return dg.SensorResult(skip_reason="; ".join(notes) or "nothing to check",
                           cursor=cursor.to_json())
