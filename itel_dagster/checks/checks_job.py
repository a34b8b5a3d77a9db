"""The job `itel_asset_checks_job` that runs every asset check of both tables, and the schedule
that runs it every 15 minutes so their results stay current in the UI.

The job runs checks only: it never materializes an asset.
"""

import dagster as dg

from itel_dagster.checks.api_sends_checks import API_SENDS_CHECKS
from itel_dagster.checks.retention_checks import RETENTION_CHECKS
from itel_dagster.checks.tracking_checks import TRACKING_CHECKS

ASSET_CHECKS = [*TRACKING_CHECKS, *API_SENDS_CHECKS, *RETENTION_CHECKS]
ASSET_CHECKS_JOB = "itel_asset_checks_job"

asset_checks_job = dg.define_asset_job(
    name=ASSET_CHECKS_JOB,
    selection=dg.AssetSelection.checks(*ASSET_CHECKS),
    executor_def=dg.in_process_executor,
    tags={"itel/operation": "asset_checks"},
    description="The asset checks of itel_cabinet_task_tracking and itel_api_sends over "
    "yesterday and today (UTC), or the days given in each check's config.",
)

# Running by default: the checks only read, a run looks at two days, and a check nobody started
# finds nothing. Stop it in the UI (Automation) where reading two days of Kafka every 15 minutes
# is too much.
asset_checks_schedule = dg.ScheduleDefinition(
    name="itel_asset_checks_schedule",
    job=asset_checks_job,
    cron_schedule="*/15 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Runs itel_asset_checks_job every 15 minutes.",
)
