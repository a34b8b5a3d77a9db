"""Error records: the JSON both workers publish to their error topic, from any stage."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timezone

import orjson
import polars as pl
import pytest

from itel_dagster.devstack import claimx_world as world
from itel_dagster_bench.stages_throughput import TOPIC, tracking_event
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
        "original_payload_bytes": len(orjson.dumps(wrong)),
        "original_payload_sha256": None,  # the whole payload is there
        "payload_truncated": False,
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


def test_payload_over_the_budget_is_cut_with_its_size_and_sha256():
    notes = 'door "B"\n\x01 hinge; ' * 400  # quotes, a line break, a control character: escaped
    text = orjson.dumps(tracking_event(world.FIRST_ASSIGNMENT_ID, notes=notes, task_id="x"))
    binary = b"\xff" + bytes(range(256)) * 40
    small = orjson.dumps(tracking_event(world.FIRST_ASSIGNMENT_ID + 1, task_id="abc"))
    errors = validated([text, binary, small]).errors
    records = error_records(errors, WORKER, "validate", failed_at=FAILED_AT)

    messages = error_record_messages(records, max_payload_bytes=2_000)
    by_offset = {orjson.loads(value)["kafka_offset"]: (value, dict(headers))
                 for _, value, headers in messages}
    for offset, original in ((500, text), (501, binary)):
        value, headers = by_offset[offset]
        record = orjson.loads(value)
        payload = record["original_payload"]
        assert len(orjson.dumps(payload)) - 2 <= 2_000  # as the record's JSON spells it
        assert record["payload_truncated"] is True and headers["payload_truncated"] == b"true"
        assert record["original_payload_bytes"] == len(original)
        assert record["original_payload_sha256"] == hashlib.sha256(original).hexdigest()
        kept, marker = payload.split("...[payload truncated: first ")
        assert marker.endswith(f" of {len(original)} bytes kept; sha256 "
                               f"{hashlib.sha256(original).hexdigest()}]")
        if offset == 501:  # base64 cut at a whole group: the start of the value decodes
            start = base64.b64decode(kept.removeprefix("base64:"))
            assert original.startswith(start) and len(start) > 1_000
        else:
            assert original.decode().startswith(kept) and len(kept) > 1_000
    record = orjson.loads(by_offset[502][0])
    assert record["original_payload"] == small.decode() and record["payload_truncated"] is False
    assert record["original_payload_bytes"] == len(small)
    assert record["original_payload_sha256"] is None
    # Within the default budget (256 KiB) nothing is cut.
    assert all(orjson.loads(value)["payload_truncated"] is False
               for _, value, _ in error_record_messages(records))
    assert records["payload_truncated"].null_count() == 3  # the caller's frame is untouched


def test_a_key_that_is_not_utf8_is_the_message_key_and_base64_in_the_record():
    raw = raw_batch_from_records([(TOPIC, 0, 9, KAFKA_MS, b"\xffk\x00", b"{oops")])
    errors = validate(transform(raw, worker=WORKER), world.ITEL_TASK_ID).errors
    [(key, value, headers)] = error_record_messages(error_records(errors, WORKER, "validate"))
    assert key == b"\xffk\x00"
    assert orjson.loads(value)["kafka_key"] == "base64:" + base64.b64encode(b"\xffk\x00").decode()
