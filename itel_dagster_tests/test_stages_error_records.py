"""Error records: the JSON both workers publish to their error topic, from any stage."""

from __future__ import annotations

import base64
from datetime import datetime, timezone

import orjson
import polars as pl
import pytest

from itel_dagster.devstack import claimx_world as world
from itel_dagster.stages.bench_stages import TOPIC, tracking_event
from itel_dagster.stages.error_records import (
    ERROR_RECORD_FIELDS,
    ERROR_RECORD_SCHEMA,
    error_record_messages,
    error_records,
    stage_failures,
)
from itel_dagster.stages.raw_batch import raw_batch_from_records
from itel_dagster.stages.transform import transform
from itel_dagster.stages.validate import validate

WORKER = "itel_cabinet_tracking_worker"
FAILED_AT = datetime(2026, 11, 28, 12, 40, 1, 250000, tzinfo=timezone.utc)
KAFKA_MS = 1_795_869_296_789  # 2026-11-28T12:34:56.789Z
NOT_UTF8 = b'{"event_id": "e-\xff"}'


def validated(values: list[bytes]):
    raw = raw_batch_from_records(
        (TOPIC, 2, 500 + i, KAFKA_MS, f"key-{i}".encode() if i else None, value)
        for i, value in enumerate(values)
    )
    return validate(transform(raw, worker=WORKER), world.ITEL_TASK_ID)


def messages_by_offset(records: pl.DataFrame) -> dict[int, tuple[bytes | None, dict]]:
    return {
        record["kafka_offset"]: (key, record)
        for key, value, _headers in error_record_messages(records)
        for record in [orjson.loads(value)]
    }


def test_validation_errors_as_json_messages():
    good = tracking_event(world.FIRST_ASSIGNMENT_ID)
    wrong = tracking_event(world.FIRST_ASSIGNMENT_ID + 1, task_id="abc")
    result = validated([orjson.dumps(good), orjson.dumps(wrong), NOT_UTF8])

    records = error_records(result.errors, WORKER, "validate", failed_at=FAILED_AT)

    assert records.schema == ERROR_RECORD_SCHEMA
    messages = messages_by_offset(records)
    assert sorted(messages) == [501, 502]
    key, record = messages[501]
    assert key == b"key-1"  # keyed as the input record
    assert list(record) == list(ERROR_RECORD_FIELDS)
    assert record == {
        "event_id": wrong["event_id"],
        "worker": WORKER,
        "stage": "validate",
        "error_type": "wrong_type",
        "error_message": "task_id is 'abc' (string), expected an integer",
        "attempt": 1,
        "kafka_topic": TOPIC,
        "kafka_partition": 2,
        "kafka_offset": 501,
        "kafka_timestamp": "2026-11-28T12:34:56.789Z",
        "kafka_key": "key-1",
        "original_payload": orjson.dumps(wrong).decode(),
        "failed_at": "2026-11-28T12:40:01.250000Z",
    }


def test_headers_repeat_the_facts_without_the_payload():
    wrong = tracking_event(world.FIRST_ASSIGNMENT_ID + 1, task_id=32514)
    result = validated([orjson.dumps(tracking_event(world.FIRST_ASSIGNMENT_ID)), orjson.dumps(wrong)])
    [(key, value, headers)] = error_record_messages(
        error_records(result.errors, WORKER, "validate", failed_at=FAILED_AT))
    facts = {name: raw.decode() for name, raw in headers}
    assert facts["error_type"] == "wrong_task_id"
    assert facts["stage"] == "validate" and facts["worker"] == WORKER
    assert (facts["kafka_topic"], facts["kafka_partition"], facts["kafka_offset"]) == (TOPIC, "2", "501")
    assert facts["event_id"] == wrong["event_id"] and facts["attempt"] == "1"
    assert "original_payload" not in facts and "task_id is 32514" in facts["error_message"]


def test_non_utf8_payload_survives_in_the_message():
    result = validated([NOT_UTF8])
    key, record = messages_by_offset(error_records(result.errors, WORKER, "validate"))[500]
    assert key is None and record["event_id"] is None
    assert record["error_type"] == "non_utf8"
    assert base64.b64decode(record["original_payload"].removeprefix("base64:")) == NOT_UTF8
    assert datetime.fromisoformat(record["failed_at"]).tzinfo is not None


def test_later_stage_failures_with_one_reason_or_a_column():
    events = [orjson.dumps(tracking_event(world.FIRST_ASSIGNMENT_ID + i)) for i in range(3)]
    valid = validated(events).valid

    same = stage_failures(
        valid, WORKER, "delta_write", "delta_write_failed", "commit conflict", FAILED_AT
    )
    per_row = stage_failures(
        valid.with_columns(http_status=pl.Series([500, 503, 429])),
        "itel_cabinet_api_worker",
        "itel_api_send",
        "itel_api_error",
        pl.format("iTel API answered HTTP {}", pl.col("http_status")),
    )

    assert same.schema == per_row.schema == ERROR_RECORD_SCHEMA
    assert same["error_message"].to_list() == ["commit conflict"] * 3
    assert same["event_id"].to_list() == valid["event_id"].to_list()
    assert per_row["error_message"].to_list() == [f"iTel API answered HTTP {s}" for s in (500, 503, 429)]
    assert per_row["stage"].unique().to_list() == ["itel_api_send"]
    payloads = [record["original_payload"] for _, record in messages_by_offset(per_row).values()]
    assert payloads == valid["original_payload"].to_list()


def test_attempt_comes_from_the_rows_when_replayed():
    valid = validated([orjson.dumps(tracking_event(world.FIRST_ASSIGNMENT_ID))]).valid
    first = stage_failures(valid, WORKER, "claimx_lookup", "claimx_timeout", "no answer")
    again = valid.with_columns(attempt=pl.lit(2))
    replayed = stage_failures(again, WORKER, "claimx_lookup", "claimx_timeout", "no answer")
    assert first["attempt"].to_list() == [1]
    assert replayed["attempt"].to_list() == [2]


def test_rows_without_event_id_and_empty_frames():
    event = orjson.dumps(tracking_event(world.FIRST_ASSIGNMENT_ID))
    rows = validated([event]).valid.drop("event_id")
    assert stage_failures(rows, WORKER, "delta_write", "x", "y")["event_id"].to_list() == [None]
    empty = error_records(validated([]).errors, WORKER, "validate")
    assert empty.schema == ERROR_RECORD_SCHEMA
    assert error_record_messages(empty) == []


def test_unknown_stage_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown stage 'enrich'"):
        error_records(validated([b"{oops"]).errors, WORKER, "enrich")
