"""Every failed run of this code location becomes one webhook alert, and the run is tagged
`itel/alert` with what became of it (sent, or not sent and why), so the UI shows it on the run.

Never raises: an unset, broken or unreachable webhook, or a bad alerts.yaml, is a tag and a log
line, never a failing sensor tick.
"""

import dagster as dg

from itel_dagster.alerts.messages import run_failure_alert, short_error, user_error
from itel_dagster.alerts.webhook import Delivery, post_alert
from itel_dagster.settings.alerts import load_alert_settings
from itel_dagster.settings.env_yaml import ConfigError
from itel_dagster.settings.workers import worker_of_job as _settings_of_job

ALERT_TAG = "itel/alert"
SENSOR_NAME = "itel_run_failure_alerts"


def worker_of_job(job_name: str) -> str | None:
    """The worker whose live job (workers.yaml `job`) or backfill job this is, for runs without
    itel tags."""
    try:
        settings = _settings_of_job(job_name)
    except ConfigError:
        return None
    return settings.name if settings is not None else None


def step_errors(context: dg.RunFailureSensorContext) -> list[tuple[str, str]]:
    found = []
    for event in context.get_step_failure_events():
        error = user_error(event.event_specific_data.error if event.event_specific_data else None)
        found.append((event.step_key or "?", error.message if error is not None else ""))
    return found


def alert_for_failed_run(context: dg.RunFailureSensorContext) -> Delivery:
    run = context.dagster_run
    try:
        settings = load_alert_settings()
    except ConfigError as exc:
        return Delivery(False, f"not sent: alerts.yaml unusable: {exc}")
    alert = run_failure_alert(
        run_id=run.run_id,
        job_name=run.job_name,
        tags=run.tags,
        error=short_error(context.failure_event.message, step_errors(context)),
        run_url=settings.run_url(run.run_id),
        worker=worker_of_job(run.job_name),
    )
    return post_alert(settings, alert)


@dg.run_failure_sensor(
    name=SENSOR_NAME,
    default_status=dg.DefaultSensorStatus.RUNNING,
    monitor_all_code_locations=False,
    description="Posts every failed run (worker, job, partition, Kafka ranges, error, link) to "
    "ALERT_WEBHOOK_URL and tags the run itel/alert with the outcome.",
)
def itel_run_failure_alerts(context: dg.RunFailureSensorContext):
    try:
        delivery = alert_for_failed_run(context)
    except Exception as exc:  # noqa: BLE001 - reading the run's events must not fail the tick
        context.log.exception("alert for run %s could not be built", context.dagster_run.run_id)
        delivery = Delivery(False, f"not sent: {type(exc).__name__}: {exc}"[:500])
    try:
        context.instance.add_run_tags(context.dagster_run.run_id, {ALERT_TAG: delivery.detail})
    except Exception:  # noqa: BLE001
        context.log.exception("could not tag run %s with %s", context.dagster_run.run_id, ALERT_TAG)
    log = context.log.info if delivery.sent else context.log.warning
    log(f"run {context.dagster_run.run_id} ({context.dagster_run.job_name}): alert {delivery.detail}")
