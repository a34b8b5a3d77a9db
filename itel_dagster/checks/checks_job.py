"""The job `itel_asset_checks_job` that runs every asset check of the workers' tables, and the
schedule that runs it every 15 minutes so their results stay current in the UI.

The job runs checks only: it never materializes an asset.
"""

import dagster as dg


ASSET_CHECKS_JOB = "itel_asset_checks_job"


def build_asset_checks_job(checks: list[dg.AssetChecksDefinition], assets: list[str]):
    """The job over `checks`, and its schedule."""
    job = dg.define_asset_job(
        name=ASSET_CHECKS_JOB,
        selection=dg.AssetSelection.checks(*checks),
        executor_def=dg.in_process_executor,
        tags={"itel/operation": "asset_checks"},
        description=f"The asset checks of {', '.join(assets)} over yesterday and today (UTC), "
        "or the days given in each check's config.",
    )
    # Running by default: the checks only read, a run looks at two days, and a check nobody
    # started finds nothing. Stop it in the UI (Automation) where reading two days of Kafka every
    # 15 minutes is too much.
    schedule = dg.ScheduleDefinition(
        name="itel_asset_checks_schedule",
        job=job,
        cron_schedule="*/15 * * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Runs itel_asset_checks_job every 15 minutes.",
    )
    return job, schedule
