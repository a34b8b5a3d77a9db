"""The config every per-day check takes (which UTC days) and how its facts become one
AssetCheckResult: passed only when every day passes, with each day's facts as metadata.
"""

from datetime import date, timedelta

import dagster as dg
from pydantic import Field

from itel_dagster.stages.day_audit import audit_days, summary


class DayCheckConfig(dg.Config):
    """Which day partitions a check looks at."""

    days: list[str] = Field(
        default_factory=list,
        description="UTC days (YYYY-MM-DD), the asset's day partitions. Empty: the day "
        "partitions the run materializes (a backfill or Materialize in the UI), else yesterday "
        "and today.")
    sample_size: int = Field(
        20, ge=1, description="At most this many event_ids / records named per problem.")


def run_days(tags: dict[str, str]) -> list[str]:
    """The day partitions a run materializes, from its tags (none for the checks job)."""
    if "dagster/partition" in tags:
        return [tags["dagster/partition"]]
    start = tags.get("dagster/asset_partition_range_start")
    end = tags.get("dagster/asset_partition_range_end")
    if not (start and end):
        return []
    first, last = date.fromisoformat(start), date.fromisoformat(end)
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


def days_of(context: dg.AssetCheckExecutionContext, config: DayCheckConfig) -> list[date]:
    """The config's days; else the run's day partitions (a check run together with a backfill
    checks the days it rebuilt); else yesterday and today."""
    days = config.days or run_days(context.run.tags)
    try:
        return audit_days(days)
    except ValueError as exc:
        raise dg.Failure(f"days {days}: {exc} (expected YYYY-MM-DD)", allow_retries=False) \
            from None


def day_check_result(facts: list, **extra_metadata) -> dg.AssetCheckResult:
    passed, severity, description, metadata = summary(facts)
    return dg.AssetCheckResult(
        passed=passed, severity=dg.AssetCheckSeverity(severity), description=description,
        metadata={**metadata, **extra_metadata})
