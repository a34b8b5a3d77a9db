"""Dead letters: error records read back from an error topic, turned into the original Kafka
records for a replay, and the replay's outcome per error record (pure).

Never raises on an error record's content: one that cannot be read is kept with a reason and is
never replayed. A payload is rebuilt byte for byte (`base64:` only for values that were not UTF-8);
a payload its error record kept only the start of (payload_truncated) is never sent as the
record: transform gives it a truncated_payload error again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timezone

import orjson
import polars as pl

from itel_dagster.kafka.range_reader import KafkaRecord
from itel_dagster.stages.error_records import ERROR_RECORD_SCHEMA, PAYLOAD_FACTS, bytes_of
from itel_dagster.stages.raw_batch import raw_batch_from_records

REPLAY_TABLE = "itel_dead_letter_replays"
REPLAYED, FAILED_AGAIN = "replayed", "failed_again"
ORIGINAL = ["kafka_topic", "kafka_partition", "kafka_offset"]  # the input record's coordinates

DEAD_LETTER_SCHEMA = pl.Schema({
    # The error record itself, `<topic>:<partition>:<offset>`: what a replay marks.
    "error_record": pl.String,
    "error_topic": pl.String,
    "error_partition": pl.Int32,
    "error_offset": pl.Int64,
    "error_timestamp": pl.Datetime("ms", "UTC"),
    # Its JSON.
    **ERROR_RECORD_SCHEMA,
    "unreadable": pl.String,  # why the error record cannot be replayed; null when it can
})
_JSON_FIELDS = list(ERROR_RECORD_SCHEMA)

REPLAY_LOG_SCHEMA = pl.Schema({
    "replay_key": pl.String,  # error_record:replay_run_id (a re-executed step writes nothing twice)
    "error_record": pl.String,
    "error_topic": pl.String,
    "error_partition": pl.Int32,
    "error_offset": pl.Int64,
    "worker": pl.String,
    "event_id": pl.String,
    "stage": pl.String,
    "error_type": pl.String,
    "attempt": pl.Int64,
    "kafka_topic": pl.String,
    "kafka_partition": pl.Int32,
    "kafka_offset": pl.Int64,
    "outcome": pl.String,  # replayed | failed_again
    "new_error_type": pl.String,  # failed_again: why, this time
    "new_attempt": pl.Int64,  # failed_again: the attempt of the new error record
    "replay_run_id": pl.String,
    "replayed_at": pl.Datetime("us", "UTC"),
    # The UTC day of the error record's Kafka timestamp: a later replay looks up only those days.
    "year": pl.Int32,
    "month": pl.Int32,
    "day": pl.Int32,
})


def error_record_id(topic: str, partition: int, offset: int) -> str:
    return f"{topic}:{partition}:{offset}"


def _timestamp(text) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def _json_row(value: bytes | None) -> tuple[dict, str | None]:
    """The fields of one error record's JSON, and why it cannot be replayed (None: it can)."""
    try:
        record = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        return {}, f"error record is not JSON: {exc}"
    if not isinstance(record, dict):
        return {}, "error record is not a JSON object"
    row = {name: record.get(name) for name in _JSON_FIELDS}
    for name in ("kafka_timestamp", "failed_at"):
        row[name] = _timestamp(row[name])
    missing = [name for name in ("kafka_topic", "kafka_partition", "kafka_offset")
               if row[name] is None]
    if missing:
        return row, f"error record lacks the original coordinates {', '.join(missing)}"
    if not all(isinstance(row[name], int) for name in ("kafka_partition", "kafka_offset")):
        return row, "error record's kafka_partition / kafka_offset are not integers"
    if row["attempt"] is not None and not isinstance(row["attempt"], int):
        row["attempt"] = None
    return row, None


def parse_dead_letters(records: Iterable[KafkaRecord]) -> pl.DataFrame:
    """One row per error record read (DEAD_LETTER_SCHEMA), in the order given."""
    rows = []
    for record in records:
        fields, unreadable = _json_row(record.value)
        rows.append({
            "error_record": error_record_id(record.topic, record.partition, record.offset),
            "error_topic": record.topic,
            "error_partition": record.partition,
            "error_offset": record.offset,
            "error_timestamp": (datetime.fromtimestamp(record.timestamp_ms / 1000, timezone.utc)
                                if record.timestamp_ms >= 0 else None),
            **{name: fields.get(name) for name in _JSON_FIELDS},
            "unreadable": unreadable,
        })
    # strict=False: a field of the wrong JSON type becomes null instead of failing the batch.
    frame = pl.DataFrame(rows, schema=DEAD_LETTER_SCHEMA, strict=False)
    return frame.with_columns(pl.col("attempt").fill_null(1))


def error_days(dead_letters: pl.DataFrame) -> list[tuple[int, int, int]]:
    """The UTC days the error records were written on (the replay log's partitions)."""
    return _with_day(dead_letters).select("year", "month", "day").unique().drop_nulls().rows()


def _with_day(frame: pl.DataFrame) -> pl.DataFrame:
    moment = pl.coalesce(pl.col("error_timestamp").cast(pl.Datetime("us", "UTC")),
                         pl.col("failed_at"))
    return frame.with_columns(moment.dt.year().cast(pl.Int32).alias("year"),
                              moment.dt.month().cast(pl.Int32).alias("month"),
                              moment.dt.day().cast(pl.Int32).alias("day"))


def select_for_replay(
    dead_letters: pl.DataFrame, error_types: Sequence[str], already_replayed: set[str],
    max_records: int | None = None,
) -> pl.DataFrame:
    """The readable error records of the chosen error_types (all when empty) not yet replayed,
    the first `max_records` of them by partition and offset."""
    wanted = pl.col("unreadable").is_null() & ~pl.col("error_record").is_in(list(already_replayed))
    if error_types:
        wanted = wanted & pl.col("error_type").is_in(list(error_types))
    selected = dead_letters.filter(wanted).sort("error_partition", "error_offset")
    return selected.head(max_records) if max_records is not None else selected


def replay_originals(selected: pl.DataFrame) -> pl.DataFrame:
    """One row per original input record (the latest error record of it wins: highest attempt,
    then last written) with `replayed_from` (that error record) and `next_attempt`."""
    return (
        selected.sort("attempt", "error_timestamp", "error_partition", "error_offset")
        .unique(subset=ORIGINAL, keep="last", maintain_order=True)
        .sort("kafka_topic", "kafka_partition", "kafka_offset")
        .select(*ORIGINAL, "kafka_timestamp", "kafka_key", "original_payload", "event_id",
                *PAYLOAD_FACTS, pl.col("error_record").alias("replayed_from"),
                (pl.col("attempt") + 1).alias("next_attempt"))
    )


def replay_batch(originals: pl.DataFrame) -> pl.DataFrame:
    """The raw batch (raw_batch.RAW_BATCH_SCHEMA) of the original records, plus `attempt`: the
    attempt a failure of this replay is, and payload_truncated / original_payload_bytes, which
    transform reads to refuse a payload that is only the start of the record's."""
    records = [
        KafkaRecord(topic, partition, offset,
                    int(timestamp.timestamp() * 1000) if timestamp is not None else -1,
                    bytes_of(key), bytes_of(payload))
        for topic, partition, offset, timestamp, key, payload in originals.select(
            *ORIGINAL, "kafka_timestamp", "kafka_key", "original_payload").iter_rows()
    ]
    return raw_batch_from_records(records).with_columns(
        originals["next_attempt"].alias("attempt"),
        originals["payload_truncated"].fill_null(False),
        originals["original_payload_bytes"])


def with_next_attempt(errors: pl.DataFrame, originals: pl.DataFrame) -> pl.DataFrame:
    """Error records of a replay carry the attempt after the one they replayed; those of a
    truncated payload keep its original's facts (size, SHA-256) and event_id."""
    carried = originals.select(
        *ORIGINAL, "next_attempt",
        *(pl.col(name).alias(f"_{name}") for name in ("event_id", *PAYLOAD_FACTS)))
    truncated = pl.col("_payload_truncated").fill_null(False)
    return (errors.join(carried, on=ORIGINAL, how="left", nulls_equal=True)
            .with_columns(
                pl.coalesce("next_attempt", "attempt").alias("attempt"),
                pl.coalesce("event_id", "_event_id").alias("event_id"),
                *(pl.when(truncated).then(pl.col(f"_{name}")).otherwise(pl.col(name)).alias(name)
                  for name in PAYLOAD_FACTS))
            .select(errors.columns))


def replay_log(
    selected: pl.DataFrame, succeeded: pl.DataFrame, failed: pl.DataFrame, run_id: str,
    replayed_at: datetime,
) -> pl.DataFrame:
    """Rows of the replay log (REPLAY_LOG_SCHEMA), one per selected error record whose original
    record now has a final outcome.

    succeeded: original coordinates handled this time or before (a Delta row, an accepted send).
    failed: the new error records (with attempt). Originals in neither (held back by the iTel
    circuit breaker) get no row: a later replay takes them again."""
    done = succeeded.select(ORIGINAL).unique().with_columns(
        pl.lit(REPLAYED).alias("outcome"), pl.lit(None, pl.String).alias("new_error_type"),
        pl.lit(None, pl.Int64).alias("new_attempt"))
    again = failed.unique(subset=ORIGINAL, keep="first").select(
        *ORIGINAL, pl.lit(FAILED_AGAIN).alias("outcome"),
        pl.col("error_type").alias("new_error_type"), pl.col("attempt").alias("new_attempt"))
    outcomes = pl.concat([done.cast(again.schema), again])
    logged = _with_day(selected).join(outcomes, on=ORIGINAL, how="inner")
    return logged.select(
        pl.format("{}:{}", pl.col("error_record"), pl.lit(run_id)).alias("replay_key"),
        "error_record", "error_topic", "error_partition", "error_offset", "worker", "event_id",
        "stage", "error_type", "attempt", *ORIGINAL, "outcome", "new_error_type", "new_attempt",
        pl.lit(run_id).alias("replay_run_id"),
        pl.lit(replayed_at, pl.Datetime("us", "UTC")).alias("replayed_at"),
        "year", "month", "day",
    ).cast(REPLAY_LOG_SCHEMA)
