"""The facts of the asset checks, per UTC day (pure): duplicate event_ids, Kafka records not
accounted for by a Delta row or a dead letter, valid events neither sent nor dead-lettered, and
freshness. Frames in, frozen facts out; it never reads Kafka or Delta and never judges a record
by anything but the workers' own transform and validate stages.

A Kafka record is accounted for when its event has a row (or an accepted send), or its
(partition, offset) is on the error topic, each record counted once; a record at or after the
group's committed offset is pending, never a failure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta

import polars as pl

from itel_dagster.stages.transform import as_utc, transform
from itel_dagster.stages.validate import validate

ERROR, WARN = "ERROR", "WARN"
COORDINATES = ["kafka_partition", "kafka_offset"]
DAY_RECORD_SCHEMA = pl.Schema({
    "kafka_partition": pl.Int32, "kafka_offset": pl.Int64, "event_id": pl.String,
    "valid": pl.Boolean})


def audit_days(days: list[str], now: datetime | None = None) -> list[date]:
    """The days to check, oldest first: ISO dates, or yesterday and today (UTC) when empty."""
    if not days:
        today = as_utc(now).date()
        return [today - timedelta(days=1), today]
    return sorted({date.fromisoformat(text) for text in days})


def day_records(raw: pl.DataFrame, expected_task_id: int) -> pl.DataFrame:
    """One row per Kafka record of a raw batch (raw_batch.RAW_BATCH_SCHEMA), DAY_RECORD_SCHEMA:
    its coordinates, and its event_id when the workers' stages find it a valid event."""
    result = validate(transform(raw, worker="day_audit"), expected_task_id=expected_task_id)
    valid = result.valid.select(*COORDINATES, "event_id", pl.lit(True).alias("valid"))
    invalid = result.errors.select(*COORDINATES, pl.lit(None, pl.String).alias("event_id"),
                                   pl.lit(False).alias("valid"))
    return pl.concat([valid.cast(DAY_RECORD_SCHEMA), invalid.cast(DAY_RECORD_SCHEMA)]) \
        .sort(COORDINATES)


def _sample(frame: pl.DataFrame, size: int) -> list[str]:
    """`event_id @ partition:offset` of the first records (the coordinates alone when no id)."""
    return [f"{event_id} @ {partition}:{offset}" if event_id else f"{partition}:{offset}"
            for partition, offset, event_id in
            frame.sort(COORDINATES).head(size).select(*COORDINATES, "event_id").iter_rows()]


def _listed(items: list[str], shown: int = 5) -> str:
    """The first few items of a sample, for a one-line description (metadata has the sample)."""
    more = f" and {len(items) - shown} more in the metadata" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def _with_pending(records: pl.DataFrame, next_offsets: dict[int, int]) -> pl.DataFrame:
    """`pending`: at or after the offset the group resumes from (it has not handled it yet)."""
    resume = pl.DataFrame({"kafka_partition": list(next_offsets),
                           "resume_at": list(next_offsets.values())},
                          schema={"kafka_partition": pl.Int32, "resume_at": pl.Int64})
    return (records.join(resume, on="kafka_partition", how="left")
            .with_columns((pl.col("kafka_offset") >= pl.col("resume_at").fill_null(0))
                          .alias("pending"))
            .drop("resume_at"))


def _is_in(column: str, values: pl.Series) -> pl.Expr:
    return pl.col(column).is_in(values.drop_nulls().unique().implode())


def _on_error_topic(records: pl.DataFrame, dead_letters: pl.DataFrame) -> pl.DataFrame:
    """`dead_lettered`: the record's coordinates are on the error topic (once, however many
    error records a replay added for it)."""
    lettered = dead_letters.select(pl.col("kafka_partition").cast(pl.Int32),
                                   pl.col("kafka_offset").cast(pl.Int64)).unique() \
        .with_columns(pl.lit(True).alias("dead_lettered"))
    return records.join(lettered, on=COORDINATES, how="left") \
        .with_columns(pl.col("dead_lettered").fill_null(False))


@dataclass(frozen=True)
class DayUniqueness:
    day: str
    rows: int
    distinct_event_ids: int
    duplicate_rows: int  # rows beyond the first of their event_id
    duplicated_event_ids: list[str] = field(default_factory=list)  # a sample, `id x count`

    @property
    def passed(self) -> bool:
        return self.duplicate_rows == 0

    severity = ERROR  # exactly-once into the table is the tracking worker's promise

    @property
    def problem(self) -> str:
        return f"{self.duplicate_rows} duplicate rows: {_listed(self.duplicated_event_ids)}"


def uniqueness(day: date, rows: pl.DataFrame, sample_size: int = 20) -> DayUniqueness:
    """rows: the day's rows of the table, with event_id."""
    counts = (rows.group_by("event_id").len().filter(pl.col("len") > 1)
              .sort("len", "event_id", descending=[True, False]).head(sample_size))
    distinct = rows["event_id"].n_unique() if rows.height else 0
    return DayUniqueness(
        day=day.isoformat(), rows=rows.height, distinct_event_ids=distinct,
        duplicate_rows=rows.height - distinct,
        duplicated_event_ids=[f"{event_id} x{n}" for event_id, n in counts.rows()])


@dataclass(frozen=True)
class DayCompleteness:
    day: str
    kafka_records: int  # records of the day Kafka holds
    valid_records: int
    invalid_records: int
    in_table: int  # records whose event has a row of the day (duplicates share one row)
    dead_lettered: int  # records without a row whose coordinates are on the error topic
    pending: int  # records the group has not reached yet
    missing: int  # records none of the above: lost
    written_after_dead_letter: int  # dead-lettered, then written (a replay): counted in_table
    rows: int
    rows_matched: int  # rows whose event_id is a valid record of the day
    rows_beyond_retention: int  # rows whose record Kafka no longer holds (kept by design)
    rows_after_read: int  # rows of records newer than this check's read of Kafka
    unexpected_rows: int  # rows of records Kafka holds that are not valid events of the day
    missing_records: list[str] = field(default_factory=list)
    unexpected_row_ids: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.missing == 0 and self.unexpected_rows == 0

    @property
    def severity(self) -> str:
        # A lost record is data loss; a row too many is a wrong table, worth a look, not a page.
        return ERROR if self.missing else WARN

    @property
    def problem(self) -> str:
        problems = []
        if self.missing:
            problems.append(f"{self.missing} Kafka records neither in the table nor "
                            f"dead-lettered: {_listed(self.missing_records)}")
        if self.unexpected_rows:
            problems.append(f"{self.unexpected_rows} rows of no valid record of the day: "
                            f"{_listed(self.unexpected_row_ids)}")
        return "; ".join(problems)


def completeness(
    day: date, records: pl.DataFrame, rows: pl.DataFrame, dead_letters: pl.DataFrame,
    next_offsets: dict[int, int], held: dict[int, tuple[int, int]], sample_size: int = 20,
) -> DayCompleteness:
    """records: day_records() of the day's Kafka records. rows: the table's rows of the day
    (event_id, and kafka_partition / kafka_offset when the table keeps them). dead_letters: the
    original coordinates (kafka_partition, kafka_offset) of the error records on the input topic.
    next_offsets: partition -> offset the group resumes from. held: partition -> (low, high)
    offsets Kafka held when the records were read."""
    judged = _on_error_topic(_with_pending(records, next_offsets), dead_letters).with_columns(
        (pl.col("valid") & _is_in("event_id", rows["event_id"])).alias("in_table"))
    status = (pl.when("in_table").then(pl.lit("in_table"))
              .when("dead_lettered").then(pl.lit("dead_lettered"))
              .when("pending").then(pl.lit("pending"))
              .otherwise(pl.lit("missing")))
    judged = judged.with_columns(status.alias("status"))
    counts = dict(judged.group_by("status").len().rows())

    matched = rows.filter(_is_in("event_id", records.filter("valid")["event_id"]))
    others = rows.filter(~_is_in("event_id", records.filter("valid")["event_id"]))
    beyond = after = 0
    unexpected = others
    if {"kafka_partition", "kafka_offset"} <= set(rows.columns) and others.height:
        bounds = pl.DataFrame({"kafka_partition": list(held),
                               "low": [low for low, _ in held.values()],
                               "high": [high for _, high in held.values()]},
                              schema={"kafka_partition": pl.Int32, "low": pl.Int64,
                                      "high": pl.Int64})
        placed = others.with_columns(pl.col("kafka_partition").cast(pl.Int32)) \
            .join(bounds, on="kafka_partition", how="left")
        is_beyond = pl.col("kafka_offset") < pl.col("low")
        is_after = pl.col("kafka_offset") >= pl.col("high")
        beyond = placed.filter(is_beyond).height
        after = placed.filter(is_after).height
        unexpected = placed.filter(~(is_beyond | is_after).fill_null(False))
    return DayCompleteness(
        day=day.isoformat(),
        kafka_records=records.height,
        valid_records=int(records["valid"].sum()),
        invalid_records=int((~records["valid"]).sum()),
        in_table=counts.get("in_table", 0),
        dead_lettered=counts.get("dead_lettered", 0),
        pending=counts.get("pending", 0),
        missing=counts.get("missing", 0),
        written_after_dead_letter=judged.filter(pl.col("in_table")
                                                & pl.col("dead_lettered")).height,
        rows=rows.height,
        rows_matched=matched.height,
        rows_beyond_retention=beyond,
        rows_after_read=after,
        unexpected_rows=unexpected.height,
        missing_records=_sample(judged.filter(pl.col("status") == "missing"), sample_size),
        unexpected_row_ids=unexpected["event_id"].sort().head(sample_size).to_list(),
    )


@dataclass(frozen=True)
class DaySends:
    day: str
    valid_events: int  # distinct event_ids of the day's valid records
    accepted: int  # an accepted row in the ledger
    dead_lettered: int  # not accepted; a record of the event is on the API error topic
    failed_in_ledger_only: int  # rejected / dead_lettered in the ledger, no error record found
    pending: int  # not handled yet, and no record of it reached by the group
    missing: int  # none of the above
    missing_events: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.missing == 0

    severity = ERROR  # an event iTel never got and nobody was told about

    @property
    def problem(self) -> str:
        return (f"{self.missing} valid events neither accepted nor dead-lettered: "
                f"{_listed(self.missing_events)}")


def sends(
    day: date, records: pl.DataFrame, ledger: pl.DataFrame, dead_letters: pl.DataFrame,
    next_offsets: dict[int, int], sample_size: int = 20,
) -> DaySends:
    """records: day_records() of the day. ledger: the send ledger's rows of the day (event_id,
    outcome). dead_letters: original coordinates of the API error records on the input topic.

    Per event, not per record: duplicates of an event are skipped once it has an outcome. A final
    outcome rejected / dead_lettered in the ledger counts as dead-lettered even without its error
    record (a run that died between its ledger write and its publish)."""
    valid = _on_error_topic(_with_pending(records.filter("valid"), next_offsets), dead_letters)
    events = valid.group_by("event_id").agg(
        pl.col("dead_lettered").any(), pl.col("pending").all(),
        pl.col("kafka_partition").first(), pl.col("kafka_offset").min())
    accepted = ledger.filter(pl.col("outcome") == "accepted")["event_id"]
    failed = ledger.filter(pl.col("outcome") != "accepted")["event_id"]
    status = (pl.when(_is_in("event_id", accepted)).then(pl.lit("accepted"))
              .when("dead_lettered").then(pl.lit("dead_lettered"))
              .when(_is_in("event_id", failed)).then(pl.lit("failed_in_ledger_only"))
              .when("pending").then(pl.lit("pending"))
              .otherwise(pl.lit("missing")))
    judged = events.with_columns(status.alias("status"))
    counts = dict(judged.group_by("status").len().rows())
    return DaySends(
        day=day.isoformat(),
        valid_events=judged.height,
        accepted=counts.get("accepted", 0),
        dead_lettered=counts.get("dead_lettered", 0),
        failed_in_ledger_only=counts.get("failed_in_ledger_only", 0),
        pending=counts.get("pending", 0),
        missing=counts.get("missing", 0),
        missing_events=_sample(judged.filter(pl.col("status") == "missing"), sample_size),
    )


@dataclass(frozen=True)
class Freshness:
    lag: int
    newest_ingested_at: str | None  # ISO 8601 UTC; None: the table has no row
    age_minutes: float | None
    freshness_minutes: float

    @property
    def passed(self) -> bool:
        # Fresh: nothing waits in Kafka, or the table was written recently.
        return self.lag == 0 or (self.age_minutes is not None
                                 and self.age_minutes <= self.freshness_minutes)

    severity = WARN  # stale is a symptom (iTel, ClaimX or Delta slow); the lag alert pages


def freshness(lag: int, newest_ingested_at: datetime | None, now: datetime,
              freshness_minutes: float) -> Freshness:
    if newest_ingested_at is None:
        return Freshness(lag, None, None, freshness_minutes)
    newest = as_utc(newest_ingested_at)
    age = (as_utc(now) - newest).total_seconds() / 60
    return Freshness(lag, newest.isoformat(), round(age, 2), freshness_minutes)


def summary(facts: list) -> tuple[bool, str, str, dict]:
    """(passed, severity, description, metadata) of one check over several days' facts: it passes
    when every day passes; its severity is the worst of the failed days'. Metadata: totals of the
    numeric facts, the failed days, and every day's facts under `per_day`."""
    failed = [f for f in facts if not f.passed]
    severity = ERROR if any(f.severity == ERROR for f in failed) else WARN
    per_day = {f.day: {k: v for k, v in asdict(f).items() if k != "day"} for f in facts}
    totals: dict[str, int] = {}
    for day_facts in per_day.values():
        for key, value in day_facts.items():
            if isinstance(value, int) and not isinstance(value, bool):
                totals[key] = totals.get(key, 0) + value
    metadata = {
        "days": ", ".join(f.day for f in facts),
        "failed_days": ", ".join(f.day for f in failed) or "none",
        **totals,
        "per_day": per_day,
    }
    description = "; ".join(f"{f.day}: {f.problem}" for f in failed) or \
        f"passed on {', '.join(f.day for f in facts)}"
    return not failed, severity, description, metadata
