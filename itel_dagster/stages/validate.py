"""Validate: split transformed events into valid rows (typed) and error rows (error_type, reason).

Every input row lands in exactly one of the two frames; nothing raises on bad data and duplicates
are kept (de-duplication is the sink's job). Polars expressions only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import polars as pl

DEFAULT_MAX_RECORD_BYTES = 262_144

# Required field → the JSON types it accepts, and how a reason names them.
REQUIRED_FIELDS: dict[str, tuple[tuple[str, ...], str]] = {
    "event_id": (("string",), "a string"),
    "task_id": (("integer",), "an integer"),
    "assignment_id": (("integer",), "an integer"),
    "project_id": (("string", "integer"), "a string or an integer"),
    "task_status": (("string",), "a string"),
    "event_type": (("string",), "a string"),
}
# Every error_type validate emits, in the order they are checked.
ERROR_TYPES = (
    "truncated_payload",
    "oversized",
    "non_utf8",
    "malformed_json",
    "too_deep",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "wrong_task_id",
)
_INTEGER_FIELDS = ("task_id", "assignment_id")
# An integer field may also be a JSON string of a decimal integer ("32513"), normalised to the
# integer: int64 ids travel as strings from JavaScript and protobuf's JSON mapping, and such a
# string names the id unambiguously. Anything else ("032513", "32513.0", " 32513", "abc") is
# wrong_type.
_DECIMAL_INTEGER = r"^-?(0|[1-9][0-9]*)$"
_VALIDATION_ONLY_COLUMNS = ("parse_error", "parse_error_reason", "json_types")
_SHOWN_VALUE_CHARS = 80


@dataclass(frozen=True)
class ValidationResult:
    """`valid`: the input rows that passed, without parse_error / parse_error_reason / json_types,
    task_id and assignment_id as Int64. `errors`: the other rows, same columns but the fields left
    as raw text, plus error_type and reason (String)."""

    valid: pl.DataFrame
    errors: pl.DataFrame


def _shown(text: pl.Expr, json_type: pl.Expr) -> pl.Expr:
    """A field's value as a reason shows it: strings quoted, long values cut."""
    cut = (
        pl.when(text.str.len_chars() > _SHOWN_VALUE_CHARS)
        .then(text.str.slice(0, _SHOWN_VALUE_CHARS) + "…")
        .otherwise(text)
    )
    return pl.when(json_type == "string").then("'" + cut + "'").otherwise(cut)


def _field_rules(
    name: str, accepted: tuple[str, ...], expected: str
) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """(is_fine, error_type, reason) of one required field; the last two are null where fine."""
    text = pl.col(name)
    json_type = pl.col("json_types").struct.field(name)
    blank = (json_type == "string") & (text.str.strip_chars() == "")
    out_of_range = text.cast(pl.Int64, strict=False).is_null()
    type_fits = json_type.is_in(accepted)
    if name in _INTEGER_FIELDS:
        type_fits = type_fits | ((json_type == "string") & text.str.contains(_DECIMAL_INTEGER))
    is_fine = type_fits.fill_null(False) & ~blank
    if name in _INTEGER_FIELDS:
        is_fine = is_fine & ~out_of_range
    wrong_type = pl.concat_str(
        pl.lit(f"{name} is "),
        _shown(text, json_type),
        pl.lit(" ("),
        json_type,
        pl.lit(f"), expected {expected}"),
    )
    # Where not fine, exactly one of these applies; the last needs no condition.
    problems = [
        (json_type.is_null(), "missing_field", pl.lit(f"missing required field '{name}'")),
        (json_type == "null", "missing_field", pl.lit(f"required field '{name}' is null")),
        (~type_fits, "wrong_type", wrong_type),
    ]
    if name in _INTEGER_FIELDS:
        last_code = "wrong_type"
        last_reason = pl.concat_str(
            pl.lit(f"{name} is "),
            _shown(text, json_type),
            pl.lit(", outside the 64-bit integer range"),
        )
    else:
        last_code, last_reason = "missing_field", pl.lit(f"required field '{name}' is empty")
    error_type, reason = pl.when(is_fine).then(None), pl.when(is_fine).then(None)
    for condition, code, why in problems:
        error_type = error_type.when(condition).then(pl.lit(code))
        reason = reason.when(condition).then(why)
    return is_fine, error_type.otherwise(pl.lit(last_code)), reason.otherwise(last_reason)


@lru_cache(maxsize=16)
def _judgement(expected_task_id: int, max_record_bytes: int) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """(is_valid, error_type, reason) expressions, built once per settings.

    is_valid is cheap; error_type and reason are costly even to plan, so validate evaluates them
    only when a batch has invalid rows, and only on those.
    """
    # A replayed truncated payload is named as such, whatever its size.
    truncated = (pl.col("parse_error") == "truncated_payload").fill_null(False)
    oversized = (pl.col("payload_bytes") > max_record_bytes).fill_null(False) & ~truncated
    unparsed = pl.col("parse_error").is_not_null()
    rules = {
        name: _field_rules(name, accepted, expected)
        for name, (accepted, expected) in REQUIRED_FIELDS.items()
    }
    wrong_task_id = rules["task_id"][0] & (
        pl.col("task_id").cast(pl.Int64, strict=False) != expected_task_id
    ).fill_null(False)
    is_valid = ~oversized & ~unparsed & ~wrong_task_id & pl.all_horizontal(
        is_fine for is_fine, _, _ in rules.values()
    )
    error_type = pl.coalesce(
        pl.when(oversized).then(pl.lit("oversized")),
        pl.col("parse_error"),
        *(code for _, code, _ in rules.values()),
        pl.when(wrong_task_id).then(pl.lit("wrong_task_id")),
    )
    field_reasons = [why for _, _, why in rules.values()]
    field_reasons.append(
        pl.when(wrong_task_id).then(
            pl.concat_str(
                pl.lit("task_id is "), pl.col("task_id"), pl.lit(f", expected {expected_task_id}")
            )
        )
    )
    reason = (
        pl.when(oversized)
        .then(
            pl.concat_str(
                pl.lit("record value is "),
                pl.col("payload_bytes"),
                pl.lit(f" bytes, over the limit of {max_record_bytes} bytes"),
            )
        )
        .when(unparsed)
        .then(pl.col("parse_error_reason"))
        .otherwise(pl.concat_str(*field_reasons, separator="; ", ignore_nulls=True))
    )
    return is_valid, error_type, reason


def validate(
    events: pl.DataFrame,
    expected_task_id: int,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> ValidationResult:
    """Judge each transformed row (see transform.TRANSFORMED_SCHEMA) in this order:

    1. oversized: the record value has more than max_record_bytes bytes (unless it is a
       replayed truncated_payload);
    2. the parse error transform found (truncated_payload, non_utf8, malformed_json, too_deep,
       not_an_object);
    3. each required field: missing_field (absent, null or blank) or wrong_type; then task_id
       must equal expected_task_id (wrong_task_id). task_id and assignment_id may be integers or
       strings of a decimal integer (normalised to Int64 in `valid`).

    error_type is the first problem found. For field problems the reason lists the first problem
    of each field, e.g. "missing required field 'event_id'; task_id is 32514, expected 32513".
    """
    is_valid, error_type, reason = _judgement(expected_task_id, max_record_bytes)
    judged = events.with_columns(is_valid.alias("_is_valid"))
    valid = (
        judged.filter(pl.col("_is_valid"))
        .drop("_is_valid", *_VALIDATION_ONLY_COLUMNS)
        .with_columns(pl.col(name).cast(pl.Int64) for name in _INTEGER_FIELDS)
    )
    invalid = judged.filter(~pl.col("_is_valid"))
    if invalid.is_empty():
        error_type, reason = pl.lit(None, pl.String), pl.lit(None, pl.String)
    errors = invalid.with_columns(error_type.alias("error_type"), reason.alias("reason")).drop(
        "_is_valid", *_VALIDATION_ONLY_COLUMNS
    )
    return ValidationResult(valid=valid, errors=errors)
