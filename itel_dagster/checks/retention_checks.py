"""Asset checks `no_records_lost_to_retention` of both worker assets: fails when a run of the
worker found records Kafka deleted before the worker handled them, naming partition and offsets.

Runs report such a loss as an asset observation partitioned by the UTC day it was found
(ops/retention_loss.py); the check reads those of its days from the event log, nothing else.
"""

import dagster as dg

from itel_dagster.checks.day_results import DayCheckConfig, days_of
from itel_dagster.ops.retention_loss import LOSS_KEY

PAGE = 1_000


def losses_found(instance: dg.DagsterInstance, asset: str, days: list[str]) -> list[dict]:
    """Every lost range a run reported on `days` (oldest first), with the day and run."""
    found, cursor = [], None
    while True:
        page = instance.fetch_observations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=days),
            limit=PAGE, cursor=cursor, ascending=True)
        for record in page.records:
            observation = record.asset_observation
            if observation is None or LOSS_KEY not in observation.metadata:
                continue
            for lost in observation.metadata["lost_offsets"].value:
                found.append({**lost, "found_on": observation.partition,
                              "run_id": record.run_id})
        if not page.has_more:
            return found
        cursor = page.cursor


def retention_check(asset: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset, name="no_records_lost_to_retention", blocking=False,
        description="No run of the worker found records Kafka deleted (retention) before the "
        "worker handled them, on the checked UTC days (the days the loss was found).")
    def no_records_lost_to_retention(context: dg.AssetCheckExecutionContext,
                                     config: DayCheckConfig) -> dg.AssetCheckResult:
        days = [day.isoformat() for day in days_of(context, config)]
        found = losses_found(context.instance, asset, days)
        lines = [f"{f['topic']}[{f['partition']}] offsets {f['first_offset']} to "
                 f"{f['last_offset']} ({f['records']} records), found {f['found_on']} by run "
                 f"{f['run_id']}" for f in found]
        lost = sum(f["records"] for f in found)
        description = (f"{lost} records lost to retention: " + "; ".join(lines[:3])
                       + ("; ..." if len(lines) > 3 else "")) if found \
            else "no records lost to retention"
        return dg.AssetCheckResult(
            passed=not found, severity=dg.AssetCheckSeverity.ERROR, description=description,
            metadata={"days": ", ".join(days), "records_lost": lost,
                      "lost_offsets": lines[:config.sample_size]})
    return no_records_lost_to_retention
