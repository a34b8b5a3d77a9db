"""The error record both workers publish to their error topic, whatever stage a row failed in.

A record carries what a person or a replay needs: the reason, the stage, the Kafka coordinates and
the original payload (text; a value or key that was not UTF-8 is `base64:<standard base64>`, see
transform.py and raw_batch.py). Building records never raises on the rows' content.

A payload longer than the error payload budget (workers.yaml `error_payload_max_bytes`, as the
record's JSON spells it) is cut, ends with a `...[payload truncated: ...]` marker and has
payload_truncated true, with the size and SHA-256 of the original bytes: a value near Kafka's 1 MB
maximum, base64'd or JSON-escaped, would otherwise make a record the error topic refuses.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import datetime

import orjson
import polars as pl

from itel_dagster.stages.transform import as_utc

STAGES = ("transform", "validate", "claimx_lookup", "delta_write", "itel_api_send",
          "select_task_events", "kafka_publish", "poison")
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
        # Of the original value: its size, and (when payload_truncated) its SHA-256 in hex.
        "original_payload_bytes": pl.Int64,
        "original_payload_sha256": pl.String,
        "payload_truncated": pl.Boolean,
        "failed_at": pl.Datetime("us", "UTC"),
    }
)
ERROR_RECORD_FIELDS = tuple(ERROR_RECORD_SCHEMA)
_HEADER_FIELDS = tuple(f for f in ERROR_RECORD_FIELDS if f not in {"original_payload", "kafka_key"})
PAYLOAD_FACTS = ("original_payload_bytes", "original_payload_sha256", "payload_truncated")
DEFAULT_ERROR_PAYLOAD_MAX_BYTES = 262_144
BASE64_PREFIX = "base64:"
# Headers are for filtering: a value longer than this (a huge event_id) is cut.
_HEADER_MAX_CHARS = 512
_TRUNCATED_MARKER = "...[payload truncated: first {} of {} bytes kept; sha256 {}]"

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
    1; a replay that fails again passes its rows' attempt + 1). original_payload_bytes comes from
    payload_bytes (transform's); the payload facts are kept when `rows` has them. error_type and
    reason are one value for all rows, or expressions over `rows`, e.g. pl.col("http_error").
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    present = set(rows.columns)
    event_id = pl.col("event_id") if "event_id" in present else pl.lit(None)
    attempt = pl.col("attempt") if "attempt" in present else pl.lit(1)
    key = pl.col("kafka_key") if "kafka_key" in present else pl.lit(None)
    facts = {name: pl.col(name) if name in present else pl.lit(None) for name in PAYLOAD_FACTS}
    if "original_payload_bytes" not in present and "payload_bytes" in present:
        facts["original_payload_bytes"] = pl.col("payload_bytes")
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
        *(fact.cast(ERROR_RECORD_SCHEMA[name]).alias(name) for name, fact in facts.items()),
        pl.lit(as_utc(failed_at), pl.Datetime("us", "UTC")).alias("failed_at"),
    )


def error_records(
    errors: pl.DataFrame, worker: str, stage: str, failed_at: datetime | None = None
) -> pl.DataFrame:
    """Error records of a frame with per-row error_type and reason columns (validate's errors)."""
    return stage_failures(errors, worker, stage, pl.col("error_type"), pl.col("reason"), failed_at)


def error_record_messages(
    records: pl.DataFrame, max_payload_bytes: int = DEFAULT_ERROR_PAYLOAD_MAX_BYTES
) -> list[tuple[bytes | None, bytes, list]]:
    """(key, value, headers) Kafka messages of error records, keyed as the input record was.

    The value is the record as a JSON object with the ERROR_RECORD_FIELDS, timestamps as ISO 8601
    UTC strings, the payload within `max_payload_bytes` (see the module's docstring); the headers
    repeat its facts (all but the payload) so tools can filter on them.
    """
    records = within_payload_budget(records, max_payload_bytes)
    as_text = [
        pl.col(name).dt.to_string(_ISO_FORMATS[name]) if name in _ISO_FORMATS
        else pl.col(name).cast(pl.String).str.slice(0, _HEADER_MAX_CHARS)
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
        if key is not None and key.startswith(b"base64:"):  # a key that was not UTF-8
            key = bytes_of(key.decode())
        headers = [(name, text.encode()) for name, text in zip(_HEADER_FIELDS, facts)
                   if text is not None]
        messages.append((key, value, headers))
    return messages


def within_payload_budget(records: pl.DataFrame, max_payload_bytes: int) -> pl.DataFrame:
    """`records` with payloads whose JSON spelling exceeds `max_payload_bytes` cut (payload facts
    set) and original_payload_bytes filled in; records already cut (a replay's) stay as they are.

    The test is polars expressions over all rows; the cut and the hash run in Python on the rows
    over the budget, which are rare."""
    payload = pl.col("original_payload")
    # An upper bound of the JSON-escaped size: `"` and `\` take 2 bytes, control characters 6.
    spelled = (payload.str.len_bytes() + payload.str.count_matches(r'["\\]')
               + 5 * payload.str.count_matches(r"[\x00-\x1f]"))
    over = (spelled > max_payload_bytes).fill_null(False) & ~pl.col("payload_truncated")
    # Where a stage's rows had no payload_bytes: the size the text stands for.
    padding = payload.str.ends_with("=").cast(pl.Int64) + payload.str.ends_with("==")
    size = pl.when(payload.str.starts_with(BASE64_PREFIX)).then(
        payload.str.strip_prefix(BASE64_PREFIX).str.len_bytes() // 4 * 3 - padding
    ).otherwise(payload.str.len_bytes())
    records = records.with_columns(
        pl.coalesce("original_payload_bytes", size).cast(pl.Int64),
        pl.col("payload_truncated").fill_null(False),
    )
    rows = records.with_row_index("_row").filter(over)["_row"]
    if rows.is_empty():
        return records
    cuts = [truncated_payload(text, max_payload_bytes)
            for text in records["original_payload"].gather(rows)]
    texts, sizes, digests = zip(*cuts)
    return records.with_columns(
        records[name].clone().scatter(rows, list(values)) for name, values in (
            ("original_payload", texts), ("original_payload_bytes", sizes),
            ("original_payload_sha256", digests), ("payload_truncated", [True] * len(rows)))
    )


def truncated_payload(text: str, max_bytes: int) -> tuple[str, int, str]:
    """(the start of `text` and the marker, within max_bytes as JSON spells it; the original
    value's size; its SHA-256 in hex). A `base64:` text is cut at a whole group of 4, so what
    is kept decodes to the first bytes of the value."""
    original = bytes_of(text)
    digest = hashlib.sha256(original).hexdigest()
    room = max_bytes - len(_TRUNCATED_MARKER.format(len(original), len(original), digest))
    if text.startswith(BASE64_PREFIX) and original != text.encode():
        groups = max(room - len(BASE64_PREFIX), 0) // 4
        kept_text = text[: len(BASE64_PREFIX) + groups * 4]
        kept = len(base64.b64decode(kept_text.removeprefix(BASE64_PREFIX)))
    else:
        low, high = 0, min(len(text), room)  # a character takes at least one byte
        while low < high:  # the longest start that fits, escaped
            middle = (low + high + 1) // 2
            if len(orjson.dumps(text[:middle])) - 2 <= room:
                low = middle
            else:
                high = middle - 1
        kept_text = text[:low]
        kept = len(kept_text.encode())
    return kept_text + _TRUNCATED_MARKER.format(kept, len(original), digest), len(original), digest


def bytes_of(text: str | None) -> bytes | None:
    """The bytes a payload or key text stands for.

    transform and raw_batch write `base64:<...>` only for bytes that are not UTF-8, so a text that
    decodes to valid UTF-8 (or is not base64 at all) was the bytes itself."""
    if text is None:
        return None
    if text.startswith(BASE64_PREFIX):
        try:
            raw = base64.b64decode(text.removeprefix(BASE64_PREFIX), validate=True)
        except (binascii.Error, ValueError):
            return text.encode()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
    return text.encode()


def _as_expr(value: str | pl.Expr) -> pl.Expr:
    return value if isinstance(value, pl.Expr) else pl.lit(value, pl.String)
