"""The plugin trigger's stages (pure): which upstream ClaimX task events become the seed's events
(select_task_events), the Kafka record each becomes (seed_event_messages), and the rows of the
trigger's forward ledger.

Events of other tasks and other lifecycle changes are skipped and counted, never errors; an
upstream record of the task that cannot be read is an error row (validate's reasons).
The seed event keeps the upstream event_id: the same upstream event always forwards as the same
event, so the forward ledger and the downstream workers' dedupe recognise a replay.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from itel_dagster.stages.tracking_rows import with_partition_columns
from itel_dagster.stages.validate import validate

# The seed event's scalar fields, in its order; `task` and `project` follow as JSON objects.
SEED_SCALARS = ("trigger_name", "event_id", "event_type", "task_id", "assignment_id",
                "project_id", "task_status")
# Columns of the forward ledger (the trigger's Delta asset), one row per forwarding run.
LEDGER_COLUMNS = ("ledger_key", "event_id", "assignment_id", "task_status", "forwarded_by_run",
                  "kafka_topic", "kafka_partition", "kafka_offset", "ingested_at",
                  "year", "month", "day")
RECORD_COLUMNS = ["kafka_topic", "kafka_partition", "kafka_offset"]


@dataclass(frozen=True)
class TaskEventSelection:
    """`selected`: the task's events on a configured lifecycle change, with trigger_name set and
    task_id / assignment_id Int64. `errors`: unreadable records of the task (validate's error
    rows). `other_tasks` / `other_statuses`: how many records were skipped for each reason."""

    selected: pl.DataFrame
    errors: pl.DataFrame
    other_tasks: int
    other_statuses: int


def select_task_events(events: pl.DataFrame, task_id: int, statuses: list[str],
                       trigger_name: str) -> TaskEventSelection:
    """`events`: transform's output over upstream ClaimX task events."""
    # A readable task_id of another task: skipped whatever else the event holds. An unreadable
    # one (or an unparsed record) is judged by validate, which names the problem.
    other_task = (pl.col("parse_error").is_null()
                  & (pl.col("task_id").cast(pl.Int64, strict=False) != task_id).fill_null(False))
    others = events.filter(other_task).height
    judged = validate(events.filter(~other_task), expected_task_id=task_id)
    on_change = pl.col("task_status").is_in(statuses)
    selected = judged.valid.filter(on_change).with_columns(
        pl.lit(trigger_name, dtype=pl.String).alias("trigger_name"))
    return TaskEventSelection(selected, judged.errors, others,
                              judged.valid.height - selected.height)


def seed_event_messages(events: pl.DataFrame) -> list[tuple[bytes | None, bytes]]:
    """(key, value) per selected event: the key is the assignment_id, so one assignment's events
    stay in one partition in order; the value is the seed's event JSON."""
    if events.is_empty():
        return []
    scalars = pl.struct([pl.col(name) for name in SEED_SCALARS]).struct.json_encode()
    timestamp = pl.col("event_timestamp").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
    value = pl.concat_str(
        scalars.str.strip_suffix("}"),
        pl.lit(',"timestamp":'), pl.when(timestamp.is_null()).then(pl.lit("null"))
        .otherwise(pl.concat_str(pl.lit('"'), timestamp, pl.lit('"'))),
        pl.lit(',"task":'), pl.col("task_json").fill_null("null"),
        pl.lit(',"project":'), pl.col("project_json").fill_null("null"),
        pl.lit("}"))
    encoded = events.select(pl.col("assignment_id").cast(pl.String).alias("key"),
                            value.alias("value"))
    return [(key.encode(), text.encode()) for key, text in encoded.iter_rows()]


def forwarded_again(rows: pl.DataFrame, ledger: pl.DataFrame,
                    succeeded_runs: set[str]) -> pl.DataFrame:
    """The event_ids of `rows` to forward again although the ledger holds them: every ledger row
    of the event is of this very Kafka record (same topic, partition, offset) and was written by
    a run that did not succeed, i.e. died or failed before its transaction committed."""
    records = rows.select("event_id", *RECORD_COLUMNS)
    same_record = ledger.with_columns(
        pl.col(c).cast(records.schema[c]) for c in RECORD_COLUMNS
    ).join(records, on="event_id", how="inner", suffix="_now")
    uncommitted = (pl.all_horizontal(pl.col(c) == pl.col(f"{c}_now") for c in RECORD_COLUMNS)
                   & ~pl.col("forwarded_by_run").is_in(list(succeeded_runs)))
    return (same_record.group_by("event_id").agg(uncommitted.all().alias("again"))
            .filter("again").select("event_id"))


def forward_ledger_rows(forwarded: pl.DataFrame, run_id: str) -> pl.DataFrame:
    """One ledger row per forwarded event and run (a forward repeated by a later run, after the
    first died uncommitted, is a row of its own)."""
    return with_partition_columns(forwarded).select(
        pl.format("{}:{}", pl.col("event_id"), pl.lit(run_id)).alias("ledger_key"),
        "event_id", "assignment_id", "task_status",
        pl.lit(run_id, dtype=pl.String).alias("forwarded_by_run"),
        *RECORD_COLUMNS,
        pl.col("ingested_at").cast(pl.Datetime("us", "UTC")),
        "year", "month", "day",
    )
