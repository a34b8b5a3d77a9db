"""Validate: typed valid rows, one error row with a stable code and a reason per invalid row."""

from __future__ import annotations

from datetime import datetime, timezone

import orjson
import polars as pl
import pytest

from itel_dagster.devstack import claimx_world as world
from itel_dagster_bench.stages_throughput import TOPIC, tracking_event
from itel_dagster.stages.raw_batch import raw_batch_from_records
from itel_dagster.stages.transform import TRANSFORMED_SCHEMA, transform
from itel_dagster.stages.validate import ERROR_TYPES, validate

EXPECTED_TASK_ID = world.ITEL_TASK_ID
_ABSENT = object()


def event_bytes(number: int = 0, **fields) -> bytes:
    """A good event with top-level fields replaced; a field set to _ABSENT is removed."""
    event = tracking_event(world.FIRST_ASSIGNMENT_ID + number, number)
    for name, value in fields.items():
        if value is _ABSENT:
            del event[name]
        else:
            event[name] = value
    return orjson.dumps(event)


def events_of(values: list[bytes | None]) -> pl.DataFrame:
    raw = raw_batch_from_records(
        (TOPIC, 0, offset, 1_795_869_296_789, None, value) for offset, value in enumerate(values)
    )
    return transform(raw, worker="itel_cabinet_api_worker", ingested_at=datetime.now(timezone.utc))


def only_error(value: bytes | None, **settings) -> tuple[str, str]:
    result = validate(events_of([value]), EXPECTED_TASK_ID, **settings)
    assert result.valid.height == 0
    assert result.errors.height == 1
    error = result.errors.row(0, named=True)
    return error["error_type"], error["reason"]


def test_good_events_are_valid_and_typed():
    result = validate(events_of([event_bytes(i) for i in range(5)]), EXPECTED_TASK_ID)

    assert result.errors.height == 0
    assert result.valid.height == 5
    schema = result.valid.schema
    assert schema["task_id"] == pl.Int64
    assert schema["assignment_id"] == pl.Int64
    assert schema["project_id"] == pl.String
    assert "parse_error" not in schema and "json_types" not in schema
    assert result.valid["task_id"].to_list() == [EXPECTED_TASK_ID] * 5
    assignment_ids = [world.FIRST_ASSIGNMENT_ID + i for i in range(5)]
    assert result.valid["assignment_id"].to_list() == assignment_ids
    assert result.valid["kafka_offset"].to_list() == list(range(5))


def test_integer_project_id_is_normalized_to_string():
    result = validate(events_of([event_bytes(project_id=123456)]), EXPECTED_TASK_ID)
    assert result.valid["project_id"].to_list() == ["123456"]


@pytest.mark.parametrize(
    ("value", "error_type", "reason"),
    [
        (b"[1, 2]", "not_an_object", "record value is a JSON array, expected an object"),
        (b'"text"', "not_an_object", "record value is a JSON string, expected an object"),
        (b"\xff\xfe{}", "non_utf8", "record value is not valid UTF-8 (byte 0)"),
        (b"", "malformed_json", "record value is empty"),
        (None, "malformed_json", "record value is empty"),
        (
            event_bytes(assignment_id=_ABSENT),
            "missing_field",
            "missing required field 'assignment_id'",
        ),
        (event_bytes(event_id=_ABSENT), "missing_field", "missing required field 'event_id'"),
        (event_bytes(task_status=None), "missing_field", "required field 'task_status' is null"),
        (event_bytes(event_type="  "), "missing_field", "required field 'event_type' is empty"),
        (event_bytes(project_id=""), "missing_field", "required field 'project_id' is empty"),
        (
            event_bytes(task_id="abc"),
            "wrong_type",
            "task_id is 'abc' (string), expected an integer",
        ),
        (
            event_bytes(task_id="032513"),
            "wrong_type",
            "task_id is '032513' (string), expected an integer",
        ),
        (
            event_bytes(task_id="32513.0"),
            "wrong_type",
            "task_id is '32513.0' (string), expected an integer",
        ),
        (
            event_bytes(assignment_id="1" * 30),
            "wrong_type",
            f"assignment_id is '{'1' * 30}', outside the 64-bit integer range",
        ),
        (
            event_bytes(assignment_id="x12"),
            "wrong_type",
            "assignment_id is 'x12' (string), expected an integer",
        ),
        (event_bytes(task_id=True), "wrong_type", "task_id is true (boolean), expected an integer"),
        (
            event_bytes(task_id=32513.0),
            "wrong_type",
            "task_id is 32513.0 (float), expected an integer",
        ),
        (
            event_bytes(assignment_id=2**64 - 1),
            "wrong_type",
            "assignment_id is 18446744073709551615, outside the 64-bit integer range",
        ),
        (
            event_bytes(project_id=[1]),
            "wrong_type",
            "project_id is [1] (array), expected a string or an integer",
        ),
        (event_bytes(event_id=17), "wrong_type", "event_id is 17 (integer), expected a string"),
        (event_bytes(task_id=32514), "wrong_task_id", "task_id is 32514, expected 32513"),
    ],
)
def test_each_bad_kind_has_its_code_and_reason(value, error_type, reason):
    assert error_type in ERROR_TYPES
    assert only_error(value) == (error_type, reason)


def test_malformed_json_reason_carries_the_parser_message():
    error_type, reason = only_error(b'{"event_id": "e1", "task_id": ')
    assert error_type == "malformed_json"
    assert reason.startswith("record value is not valid JSON: ") and "line 1" in reason


def test_oversized_is_judged_on_the_record_bytes_before_anything_else():
    big = event_bytes(padding="x" * 400)
    assert only_error(big, max_record_bytes=len(big) - 1) == (
        "oversized",
        f"record value is {len(big)} bytes, over the limit of {len(big) - 1} bytes",
    )
    assert only_error(b"{" * 50, max_record_bytes=10)[0] == "oversized"
    assert validate(events_of([big]), EXPECTED_TASK_ID, max_record_bytes=len(big)).valid.height == 1


def test_one_error_type_and_every_field_problem_in_the_reason():
    value = event_bytes(event_id=_ABSENT, assignment_id="x12", task_id=1)
    assert only_error(value) == (
        "missing_field",
        "missing required field 'event_id'; assignment_id is 'x12' (string), expected an integer; "
        "task_id is 1, expected 32513",
    )


def test_long_values_are_cut_in_reasons():
    error_type, reason = only_error(event_bytes(task_id="x" * 500))
    assert error_type == "wrong_type"
    assert reason == f"task_id is '{'x' * 80}…' (string), expected an integer"
    assert only_error(event_bytes(task_id="9" * 500))[1] == (
        f"task_id is '{'9' * 80}…', outside the 64-bit integer range")


def test_ids_as_decimal_strings_are_normalised_to_integers():
    # int64 ids often travel as JSON strings (JavaScript, protobuf's JSON mapping).
    value = event_bytes(task_id=str(EXPECTED_TASK_ID), assignment_id="5000123")
    result = validate(events_of([value]), EXPECTED_TASK_ID)
    assert result.errors.is_empty()
    assert result.valid.select("task_id", "assignment_id").rows() == [(EXPECTED_TASK_ID, 5000123)]
    assert result.valid.schema["task_id"] == pl.Int64
    assert only_error(event_bytes(task_id="32514")) == (
        "wrong_task_id", "task_id is 32514, expected 32513")


def test_expected_task_id_comes_from_the_caller():
    result = validate(events_of([event_bytes(task_id=777)]), expected_task_id=777)
    assert result.valid["task_id"].to_list() == [777]


def test_valid_plus_errors_is_the_input_with_every_offset_once():
    values = [
        event_bytes(0),
        b"{oops",
        b"\x80\x81",
        event_bytes(1, task_id="abc"),
        event_bytes(2),
        event_bytes(2),  # a duplicate event_id is kept: de-duplication is the sink's job
        event_bytes(3, assignment_id=_ABSENT),
        b"42",
        event_bytes(4, task_id=32514),
        None,
    ]
    result = validate(events_of(values), EXPECTED_TASK_ID)

    assert result.valid.height + result.errors.height == len(values)
    offsets = result.valid["kafka_offset"].to_list() + result.errors["kafka_offset"].to_list()
    assert sorted(offsets) == list(range(len(values)))
    assert result.valid["kafka_offset"].to_list() == [0, 4, 5]
    assert result.errors["error_type"].null_count() == 0
    assert result.errors["reason"].null_count() == 0
    assert set(result.errors["error_type"]) <= set(ERROR_TYPES)


def test_one_bad_record_in_a_hundred_leaves_ninety_nine_valid():
    values = [event_bytes(i) for i in range(100)]
    values[37] = values[37][:-20]  # truncated

    result = validate(events_of(values), EXPECTED_TASK_ID)

    assert result.valid.height == 99
    assert result.errors["kafka_offset"].to_list() == [37]
    assert result.errors["error_type"].to_list() == ["malformed_json"]


def test_error_rows_keep_payload_and_coordinates():
    value = event_bytes(task_id="abc")
    errors = validate(events_of([event_bytes(1), value]), EXPECTED_TASK_ID).errors
    row = errors.row(0, named=True)
    assert row["original_payload"] == value.decode()
    assert (row["kafka_topic"], row["kafka_partition"], row["kafka_offset"]) == (TOPIC, 0, 1)
    assert row["task_id"] == "abc"  # errors keep the raw text


def test_empty_and_all_invalid_batches_keep_their_schemas():
    empty = validate(events_of([]), EXPECTED_TASK_ID)
    all_bad = validate(events_of([b"{oops", b"[]"]), EXPECTED_TASK_ID)
    internal = ("parse_error", "parse_error_reason", "json_types")
    valid_columns = [name for name in TRANSFORMED_SCHEMA if name not in internal]
    for result in (empty, all_bad):
        assert result.valid.columns == valid_columns
        assert result.valid.schema["task_id"] == pl.Int64
        assert result.errors.columns == [*valid_columns, "error_type", "reason"]
        assert result.errors.schema["error_type"] == pl.String
    assert all_bad.errors.height == 2 and all_bad.valid.height == 0
