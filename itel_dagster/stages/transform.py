"""Transform: a raw Kafka batch (see raw_batch.py) → one row per record with the event's fields.

Never raises on bad input and never drops a row: a value that is empty, not UTF-8, not JSON or not
a JSON object gets a `parse_error` code and reason, and its fields stay null. Judging the fields
(required, types, task id) is validate's job, so they are kept raw here: each top-level field is
its text (strings as-is, other JSON values in JSON spelling) and `json_types` says what JSON type
it was.

`original_payload` is the record value as text. A value that is not UTF-8 is kept losslessly as
`base64:` followed by the standard base64 of its bytes (such rows have parse_error 'non_utf8', or
'oversized').

task_json / project_json are the event's `task` / `project` objects re-serialized compactly by
orjson (same keys and order, not byte-identical to the record); null when not an object.

Only the per-record JSON decoding is Python (orjson, into flat lists); everything after it is
polars expressions. `pl.read_ndjson` over the joined batch would be faster, but one bad line fails
the whole batch, and bad lines are common here.

A value over `max_record_bytes` gets parse_error 'oversized' and only its top-level fields: validate
rejects it anyway, and its objects (task_json, the fallbacks) would copy its bytes into more columns.

Deep nesting never reaches a recursion limit or a native stack: orjson refuses documents nested
over 1024 levels (parse_error 'too_deep'), and a `task` / `project` object it cannot write back
(over 254 levels) makes the record 'too_deep' too; deep parts in fields not read are not touched.

A replay batch (dead_letters.replay_batch) may mark rows payload_truncated: their value is only the
start of the original, kept by an error record; they get parse_error 'truncated_payload', undecoded.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime, timezone
from operator import itemgetter

import orjson
import polars as pl

from itel_dagster.stages.validate import DEFAULT_MAX_RECORD_BYTES

# Top-level scalar fields kept as text, each with its JSON type in `json_types`.
EVENT_FIELDS = (
    "event_id",
    "event_type",
    "trigger_name",
    "project_id",
    "task_id",
    "assignment_id",
    "task_name",
    "task_status",
)
# Fields of the event's `task` object the API payload falls back to when enrichment is skipped.
TASK_FALLBACK_FIELDS = {
    "task_cabinet_id": "cabinet_id",
    "task_technician_notes": "technician_notes",
}

JSON_TYPES_DTYPE = pl.Struct({name: pl.String for name in EVENT_FIELDS})
TRANSFORMED_SCHEMA = pl.Schema(
    {
        **{name: pl.String for name in EVENT_FIELDS},
        "event_timestamp": pl.Datetime("us", "UTC"),
        "task_json": pl.String,
        "project_json": pl.String,
        **{name: pl.String for name in TASK_FALLBACK_FIELDS},
        "original_payload": pl.String,
        "payload_bytes": pl.Int64,
        "kafka_topic": pl.String,
        "kafka_partition": pl.Int32,
        "kafka_offset": pl.Int64,
        "kafka_timestamp": pl.Datetime("ms", "UTC"),
        "kafka_key": pl.String,
        "ingested_at": pl.Datetime("us", "UTC"),
        "worker": pl.String,
        "parse_error": pl.String,
        "parse_error_reason": pl.String,
        "json_types": JSON_TYPES_DTYPE,
    }
)

# JSON type names as validate reports them ("task_id is 'abc' (string), ...").
JSON_TYPE_NAMES = {
    str: "string",
    int: "integer",
    float: "float",
    bool: "boolean",
    type(None): "null",
    dict: "object",
    list: "array",
}
# ISO 8601 with a fraction of any length and Z or an offset; a time without a zone is taken as UTC.
_TIMESTAMP_FORMAT_ZONED = "%Y-%m-%dT%H:%M:%S%.f%#z"
_TIMESTAMP_FORMAT_NAIVE = "%Y-%m-%dT%H:%M:%S%.f"

_loads = orjson.loads
_dumps = orjson.dumps


class _Missing:
    """Stands for a field the event does not have (JSON null is None)."""


_MISSING = _Missing()
_OVERSIZED_REASON = "record value is {} bytes, over the limit of {} bytes; not decoded"
_TOO_DEEP = ("too_deep", "record value nests JSON deeper than 1024 levels; not decoded")
_TOO_DEEP_OBJECT = ("too_deep", "record's task or project object nests JSON deeper than 254 "
                    "levels, more than can be carried on")
_TRUNCATED_REASON = ("record value is only the start an error record kept of a {}-byte payload "
                     "(payload_truncated; see original_payload_sha256): the original record "
                     "cannot be rebuilt from it and is not processed")
# What a top-level field too deep to write back as text shows (validate names its JSON type).
_TOO_DEEP_TEXT = "<nested deeper than 254 levels>"
_SCALAR_FIELDS = (*EVENT_FIELDS, "timestamp")
_pick_scalars = itemgetter(*_SCALAR_FIELDS)
_FALLBACK_KEYS = tuple(TASK_FALLBACK_FIELDS.values())
# Placeholders of a record that did not parse.
_NO_SCALARS = (None,) * len(_SCALAR_FIELDS)
_NO_FALLBACKS = (None,) * len(TASK_FALLBACK_FIELDS)
_NoneType = type(None)


def _json_text(value) -> str | None:
    """The text of a JSON value: strings as-is, everything else in JSON spelling."""
    if value is None or value is _MISSING:
        return None
    kind = type(value)
    if kind is str:
        return value
    if kind is int:
        return str(value)
    try:
        return _dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError: nested deeper than orjson writes
        return _TOO_DEEP_TEXT


def _parse_failure(value: bytes | None, error: ValueError) -> tuple[str, str]:
    """(parse_error, parse_error_reason) of a value orjson refused."""
    if not value:
        return "malformed_json", "record value is empty"
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as bad_bytes:
        return "non_utf8", f"record value is not valid UTF-8 (byte {bad_bytes.start})"
    if str(error).startswith("depth limit exceeded"):
        return _TOO_DEEP
    return "malformed_json", f"record value is not valid JSON: {error}"


def _scalars_of(event: dict) -> tuple | list:
    try:
        return _pick_scalars(event)
    except KeyError:
        return [event.get(name, _MISSING) for name in _SCALAR_FIELDS]


def _not_an_object(event) -> tuple[str, str]:
    kind = JSON_TYPE_NAMES.get(type(event), type(event).__name__)
    return "not_an_object", f"record value is a JSON {kind}, expected an object"


def _field(
    name: str, column: Sequence, parsed: pl.Expr
) -> tuple[list[pl.Series], pl.Expr, pl.Expr]:
    """One field over the batch → (series to add, its text expression, its JSON type expression).

    The usual column holds one JSON type (strings, or 64-bit integers) and nulls, and goes to
    polars as it is; any other column is converted value by value. `parsed` is false on the rows
    whose record did not parse: their fields have no type.
    """
    kinds = set(map(type, column))
    has_nulls = _NoneType in kinds
    kinds.discard(_NoneType)
    if kinds <= {str} or kinds == {int}:
        kind = kinds.pop() if kinds else str
        try:
            series = pl.Series(name, column, dtype=pl.String if kind is str else pl.Int64)
        except TypeError:  # an integer beyond 64 bits: value by value below
            pass
        else:
            json_type = pl.lit(JSON_TYPE_NAMES[kind])
            if has_nulls:
                is_set = pl.col(name).is_not_null()
                json_type = pl.when(is_set).then(json_type).when(parsed).then(pl.lit("null"))
            return [series], pl.col(name).cast(pl.String), json_type
    type_column = f"{name}.json_type"
    texts = [_json_text(value) for value in column]
    names = [JSON_TYPE_NAMES.get(type(value)) for value in column]
    return (
        [pl.Series(name, texts, dtype=pl.String), pl.Series(type_column, names, dtype=pl.String)],
        pl.col(name),
        pl.when(parsed).then(pl.col(type_column)),
    )


def _decode(
    values: list[bytes | None], max_record_bytes: int, refused: dict[int, tuple[str, str]]
) -> tuple[list[pl.Series], dict[str, pl.Expr]]:
    """Per-record JSON decoding → (series, expressions of the decoded output columns).

    Python does only the JSON decoding; texts and types are made per column afterwards. Rows in
    `refused` are not decoded: they get that (parse_error, reason).
    """
    # Fields go row after row into flat lists (no tuple per row to keep alive); column i of a
    # flat list of width w is flat[i::w].
    scalars, fallbacks, tasks, projects = [], [], [], []
    failures: list[tuple[int, str, str]] = []
    not_text: list[int] = []  # rows whose original_payload must be base64
    add_scalars, add_fallbacks, add_task, add_project = (
        scalars.extend, fallbacks.extend, tasks.append, projects.append,
    )
    for row, value in enumerate(values):
        kept_scalars = _NO_SCALARS
        if refused and row in refused:
            failure = refused[row]
        else:
            try:
                event = _loads(value)
                failure = None if type(event) is dict else _not_an_object(event)
            except ValueError as error:
                event, failure = None, _parse_failure(value, error)
            if failure is not None and failure[0] == "non_utf8":
                not_text.append(row)
            if value is not None and len(value) > max_record_bytes:
                # Its top-level fields only (the error record names its event_id); none of its
                # objects, which is where such a value's bytes are.
                if failure is None:
                    kept_scalars = _scalars_of(event)
                failure = "oversized", _OVERSIZED_REASON.format(len(value), max_record_bytes)
        if failure is None:
            task, project = event.get("task"), event.get("project")
            try:
                # .decode(): orjson's bytes keep their 4 KB buffer; a str of the text is sized to
                # it (10,000 events held 77 MB of buffers for 5 MB of JSON).
                task_text = _dumps(task).decode() if type(task) is dict else None
                project_text = _dumps(project).decode() if type(project) is dict else None
            except TypeError:  # orjson.JSONEncodeError: nested deeper than orjson writes
                failure, kept_scalars = _TOO_DEEP_OBJECT, _scalars_of(event)
        if failure is not None:
            failures.append((row, *failure))
            add_scalars(kept_scalars)
            add_fallbacks(_NO_FALLBACKS)
            add_task(None)
            add_project(None)
            continue
        add_scalars(_scalars_of(event))
        add_task(task_text)
        add_project(project_text)
        add_fallbacks(map(task.get, _FALLBACK_KEYS) if task_text is not None else _NO_FALLBACKS)

    series: list[pl.Series] = []
    exprs: dict[str, pl.Expr] = {}
    types: dict[str, pl.Expr] = {}
    parsed = pl.col("parse_error").is_null() if failures else pl.lit(True)
    for i, name in enumerate(_SCALAR_FIELDS):
        added, exprs[name], types[name] = _field(name, scalars[i :: len(_SCALAR_FIELDS)], parsed)
        series += added
    for i, name in enumerate(TASK_FALLBACK_FIELDS):
        added, exprs[name], _ = _field(name, fallbacks[i :: len(TASK_FALLBACK_FIELDS)], parsed)
        series += added
    for name, column in (("task_json", tasks), ("project_json", projects)):
        series.append(pl.Series(name, column, dtype=pl.String))
        exprs[name] = pl.col(name)
    exprs["json_types"] = pl.struct(types[name].alias(name) for name in EVENT_FIELDS)
    if failures:
        rows, codes, reasons = zip(*failures)
        series.append(_scattered("parse_error", len(values), rows, codes))
        series.append(_scattered("parse_error_reason", len(values), rows, reasons))
        exprs["parse_error"] = pl.col("parse_error")
        exprs["parse_error_reason"] = pl.col("parse_error_reason")
    else:
        exprs["parse_error"] = exprs["parse_error_reason"] = pl.lit(None, pl.String)
    if not_text:
        series.append(_payload_text(values, not_text))
        exprs["original_payload"] = pl.col("original_payload")
    else:
        exprs["original_payload"] = pl.col("value").cast(pl.String)
    return series, exprs


def _scattered(name: str, length: int, rows: Sequence[int], values: Sequence[str]) -> pl.Series:
    column: list[str | None] = [None] * length
    for row, value in zip(rows, values):
        column[row] = value
    return pl.Series(name, column, dtype=pl.String)


def _payload_text(values: list[bytes | None], not_text: list[int]) -> pl.Series:
    """original_payload when some values are not UTF-8: those become `base64:<base64>`."""
    texts = list(values)
    for row in not_text:
        texts[row] = b"base64:" + base64.b64encode(values[row])
    # Built from Python: masking the bad values inside polars still leaves their bytes in the
    # buffer, and the cast to String rejects them.
    return pl.Series("original_payload", texts, dtype=pl.Binary).cast(pl.String)


def _refused(raw: pl.DataFrame) -> dict[int, tuple[str, str]]:
    """Rows a replay batch marks payload_truncated → their (parse_error, reason)."""
    if "payload_truncated" not in raw.columns:
        return {}
    marked = raw.with_row_index("_row").filter(pl.col("payload_truncated").fill_null(False))
    return {
        row: ("truncated_payload", _TRUNCATED_REASON.format(original))
        for row, original in marked.select("_row", "original_payload_bytes").iter_rows()
    }


def as_utc(moment: datetime | None) -> datetime:
    """`moment` in UTC (a naive one is taken as UTC); now when None."""
    if moment is None:
        return datetime.now(timezone.utc)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _parse_timestamp(text: pl.Expr) -> pl.Expr:
    zoned = text.str.to_datetime(
        _TIMESTAMP_FORMAT_ZONED, time_unit="us", time_zone="UTC", strict=False
    )
    naive = text.str.to_datetime(_TIMESTAMP_FORMAT_NAIVE, time_unit="us", strict=False)
    return pl.coalesce(zoned, naive.dt.replace_time_zone("UTC"))


def transform(
    raw: pl.DataFrame,
    worker: str,
    ingested_at: datetime | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> pl.DataFrame:
    """One output row per raw row, in order, with the columns of TRANSFORMED_SCHEMA.

    `ingested_at` (default: now) is one UTC value for the whole batch; a naive value is taken as
    UTC. event_timestamp is null when "timestamp" is absent or not an ISO 8601 string.
    """
    series, decoded = _decode(raw["value"].to_list(), max_record_bytes, _refused(raw))
    passed_through = ("task_json", "project_json", *TASK_FALLBACK_FIELDS, "original_payload")
    return raw.hstack(series).select(
        *(decoded[name].alias(name) for name in EVENT_FIELDS),
        _parse_timestamp(decoded["timestamp"]).alias("event_timestamp"),
        *(decoded[name].alias(name) for name in passed_through),
        pl.col("value").bin.size().cast(pl.Int64).alias("payload_bytes"),
        "kafka_topic",
        "kafka_partition",
        "kafka_offset",
        "kafka_timestamp",
        "kafka_key",
        pl.lit(as_utc(ingested_at), dtype=pl.Datetime("us", "UTC")).alias("ingested_at"),
        pl.lit(worker, dtype=pl.String).alias("worker"),
        *(decoded[name].alias(name) for name in ("parse_error", "parse_error_reason")),
        decoded["json_types"].alias("json_types"),
    )
