"""A micro-batch of Kafka records as a polars DataFrame: the input of `transform`.

Only builds the frame; consuming from Kafka is the consumer resource's job.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

import polars as pl

RAW_BATCH_SCHEMA = pl.Schema(
    {
        "kafka_topic": pl.String,
        "kafka_partition": pl.Int32,
        "kafka_offset": pl.Int64,
        "kafka_timestamp": pl.Datetime("ms", "UTC"),
        "kafka_key": pl.String,
        "value": pl.Binary,
    }
)

KafkaRecord = tuple[str, int, int, int, bytes | None, bytes | None]


def _key_text(key: bytes | None) -> str | None:
    """The key as text; one that is not UTF-8 as `base64:<standard base64>`, as transform keeps
    such a value (error_records.bytes_of turns either back into the bytes)."""
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(key).decode()


def raw_batch_from_records(records: Iterable[KafkaRecord]) -> pl.DataFrame:
    """Records are (topic, partition, offset, timestamp_ms, key, value) tuples.

    kafka_key is null when absent, `base64:...` when not UTF-8; a negative timestamp_ms (Kafka's -1, "no
    timestamp") becomes a null kafka_timestamp.
    """
    columns = list(zip(*records)) or [()] * 6
    topics, partitions, offsets, timestamps_ms, keys, values = columns
    return pl.DataFrame(
        {
            "kafka_topic": pl.Series(topics, dtype=pl.String),
            "kafka_partition": pl.Series(partitions, dtype=pl.Int32),
            "kafka_offset": pl.Series(offsets, dtype=pl.Int64),
            "kafka_timestamp": pl.Series(timestamps_ms, dtype=pl.Int64),
            "kafka_key": pl.Series([_key_text(k) for k in keys], dtype=pl.String),
            "value": pl.Series(values, dtype=pl.Binary),
        }
    ).with_columns(
        pl.when(pl.col("kafka_timestamp") >= 0)
        .then(pl.col("kafka_timestamp"))
        .cast(pl.Datetime("ms"))
        .dt.replace_time_zone("UTC")
    )
