"""The error record both workers publish to their error topic, whatever stage a row failed in.

A record carries what a person or a replay needs: the reason, the stage, the Kafka coordinates and
the original payload (text; a value that was not UTF-8 is `base64:<standard base64>`, see
transform.py). Building records never raises on the rows' content.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from itel_dagster.stages.transform import as_utc

STAGES = ("transform", "validate", "claimx_lookup", "delta_write", "itel_api_send", "poison")
ERROR_RECORD_SCHEMA = pl.Schema(
    {
        "event_id": pl.String,
        "worker": pl.String,
        "stage": pl.String,
        "error_type": pl.String,
        "error_message": pl.String,
        "attempt": pl.Int64,
        "kafka_topic": pl.String,
        "kafka_partition": pl.Int32,
        "kafka_offset": pl.Int64,
        "kafka_timestamp": pl.Datetime("ms", "UTC"),
        "kafka_key": pl.String,
        "original_payload": pl.String,
        "failed_at": pl.Datetime("us", "UTC"),
    }
)
ERROR_RECORD_FIELDS = tuple(ERROR_RECORD_SCHEMA)
_HEADER_FIELDS = tuple(f for f in ERROR_RECORD_FIELDS if f not in {"original_payload", "kafka_key"})

# ISO 8601 in UTC, as the JSON of a record writes the two timestamps.
_ISO_FORMATS = {"kafka_timestamp": "%Y-%m-%dT%H:%M:%S%.3fZ", "failed_at": "%Y-%m-%dT%H:%M:%S%.6fZ"}


def stage_failures(
    rows: pl.DataFrame,
    worker: str,
    stage: str,
    error_type: str | pl.Expr,
    reason: str | pl.Expr,
    failed_at: datetime | None = None,
) -> pl.DataFrame:
    """Error records (ERROR_RECORD_SCHEMA) of `rows`, which all failed in `stage`.

    `rows` needs kafka_topic, kafka_partition, kafka_offset, kafka_timestamp and original_payload,
    as every stage's frame carries them; event_id, kafka_key and attempt are used when present (else null and
    1; a replay that fails again passes its rows' attempt + 1). error_type and reason are one value
    for all rows, or expressions over `rows`, e.g. pl.col("http_error").
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    present = set(rows.columns)
    event_id = pl.col("event_id") if "event_id" in present else pl.lit(None)
    attempt = pl.col("attempt") if "attempt" in present else pl.lit(1)
    key = pl.col("kafka_key") if "kafka_key" in present else pl.lit(None)
    return rows.select(
        event_id.cast(pl.String).alias("event_id"),
        pl.lit(worker, pl.String).alias("worker"),
        pl.lit(stage, pl.String).alias("stage"),
        _as_expr(error_type).cast(pl.String).alias("error_type"),
        _as_expr(reason).cast(pl.String).alias("error_message"),
        attempt.cast(pl.Int64).alias("attempt"),
        pl.col("kafka_topic").cast(pl.String),
        pl.col("kafka_partition").cast(pl.Int32),
        pl.col("kafka_offset").cast(pl.Int64),
        pl.col("kafka_timestamp").cast(pl.Datetime("ms", "UTC")),
        key.cast(pl.String).alias("kafka_key"),
        pl.col("original_payload").cast(pl.String),
        pl.lit(as_utc(failed_at), pl.Datetime("us", "UTC")).alias("failed_at"),
    )


def error_records(
    errors: pl.DataFrame, worker: str, stage: str, failed_at: datetime | None = None
) -> pl.DataFrame:
    """Error records of a frame with per-row error_type and reason columns (validate's errors)."""
    return stage_failures(errors, worker, stage, pl.col("error_type"), pl.col("reason"), failed_at)


def error_record_messages(records: pl.DataFrame) -> list[tuple[bytes | None, bytes, list]]:
    """(key, value, headers) Kafka messages of error records, keyed as the input record was.

    The value is the record as a JSON object with the ERROR_RECORD_FIELDS, timestamps as ISO 8601
    UTC strings; the headers repeat its facts (all but the payload) so tools can filter on them.
    """
    as_text = [
        pl.col(name).dt.to_string(_ISO_FORMATS[name]) if name in _ISO_FORMATS
        else pl.col(name).cast(pl.String)
        for name in _HEADER_FIELDS
    ]
    encoded = records.select(
        pl.col("kafka_key").cast(pl.Binary).alias("key"),
        pl.struct(
            pl.col(name).dt.to_string(_ISO_FORMATS[name]) if name in _ISO_FORMATS else pl.col(name)
            for name in ERROR_RECORD_FIELDS
        )
        .struct.json_encode()
        .cast(pl.Binary)
        .alias("value"),
        *as_text,
    )
    messages = []
    for row in encoded.iter_rows():
        key, value, *facts = row
        headers = [(name, text.encode()) for name, text in zip(_HEADER_FIELDS, facts)
                   if text is not None]
        messages.append((key, value, headers))
    return messages


def _as_expr(value: str | pl.Expr) -> pl.Expr:
    return value if isinstance(value, pl.Expr) else pl.lit(value, pl.String)
