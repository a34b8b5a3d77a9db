"""Raw batch and transform: fields, metadata and dtypes of good events; bad input kept as rows."""

from __future__ import annotations

import base64
from datetime import datetime, timezone

import orjson
import polars as pl

from itel_dagster.devstack import claimx_world as world
from itel_dagster_bench.stages_throughput import TOPIC, tracking_event
from itel_dagster.stages.raw_batch import RAW_BATCH_SCHEMA, raw_batch_from_records
from itel_dagster.stages.transform import TRANSFORMED_SCHEMA, transform
from itel_dagster.stages.validate import validate

INGESTED_AT = datetime(2026, 11, 28, 13, 0, tzinfo=timezone.utc)
KAFKA_MS = 1_795_869_296_789  # 2026-11-28T12:34:56.789Z


def raw_of(values: list[bytes | None], partition: int = 3, first_offset: int = 100) -> pl.DataFrame:
    return raw_batch_from_records(
        (TOPIC, partition, first_offset + i, KAFKA_MS + i, f"key-{i}".encode(), value)
        for i, value in enumerate(values)
    )


def transformed(values: list[bytes | None]) -> pl.DataFrame:
    return transform(raw_of(values), worker="itel_cabinet_tracking_worker", ingested_at=INGESTED_AT)


def test_raw_batch_columns_keys_and_timestamps():
    raw = raw_batch_from_records(
        [
            (TOPIC, 0, 7, KAFKA_MS, b"k1", b"{}"),
            (TOPIC, 1, 8, -1, b"\xff\xfe", None),
            (TOPIC, 2, 9, 0, None, b"x"),
        ]
    )
    assert raw.schema == RAW_BATCH_SCHEMA
    assert raw["kafka_key"].to_list() == ["k1", "base64://4=", None]  # a key not UTF-8: base64
    assert raw["kafka_timestamp"].to_list() == [
        datetime(2026, 11, 28, 12, 34, 56, 789000, tzinfo=timezone.utc),
        None,  # Kafka's -1: no timestamp
        datetime(1970, 1, 1, tzinfo=timezone.utc),
    ]
    assert raw["value"].to_list() == [b"{}", None, b"x"]
    assert raw_batch_from_records([]).schema == RAW_BATCH_SCHEMA


def test_good_event_fields_metadata_and_dtypes():
    assignment_id = world.FIRST_ASSIGNMENT_ID + 42
    event = tracking_event(assignment_id, 5)
    value = orjson.dumps(event)

    out = transformed([value])

    assert out.schema == TRANSFORMED_SCHEMA
    row = out.row(0, named=True)
    assert row["event_id"] == event["event_id"]
    assert row["event_type"] == "CUSTOM_TASK_COMPLETED"
    assert row["trigger_name"] == "iTel Cabinet Task Tracking"
    assert row["project_id"] == world.project_id_for(assignment_id)
    assert row["task_id"] == str(world.ITEL_TASK_ID)
    assert row["assignment_id"] == str(assignment_id)
    assert row["task_name"] == world.ITEL_TASK_NAME
    assert row["task_status"] == "completed"
    assert row["event_timestamp"] == datetime(2026, 11, 28, 12, 34, 56, 789000, tzinfo=timezone.utc)
    assert orjson.loads(row["task_json"]) == event["task"]
    assert orjson.loads(row["project_json"]) == event["project"]
    assert row["task_cabinet_id"] == world.cabinet_id_for(assignment_id)
    assert row["task_technician_notes"] == world.technician_notes_for(assignment_id)
    assert row["original_payload"] == value.decode()
    assert row["payload_bytes"] == len(value)
    assert (row["kafka_topic"], row["kafka_partition"], row["kafka_offset"]) == (TOPIC, 3, 100)
    assert row["kafka_timestamp"] == datetime(2026, 11, 28, 12, 34, 56, 789000, tzinfo=timezone.utc)
    assert row["ingested_at"] == INGESTED_AT
    assert row["worker"] == "itel_cabinet_tracking_worker"
    assert row["parse_error"] is None and row["parse_error_reason"] is None
    assert row["json_types"] == {
        "event_id": "string",
        "event_type": "string",
        "trigger_name": "string",
        "project_id": "string",
        "task_id": "integer",
        "assignment_id": "integer",
        "task_name": "string",
        "task_status": "string",
    }


def test_raw_values_keep_their_json_type():
    event = tracking_event(
        world.FIRST_ASSIGNMENT_ID, task_id="abc", assignment_id="x12", project_id=123456
    )
    del event["task_status"]
    event["event_type"] = None
    event["task_name"] = True
    event["trigger_name"] = 1.5
    event["event_id"] = {"nested": [1, 2]}
    good = tracking_event(world.FIRST_ASSIGNMENT_ID + 1)

    out = transformed([orjson.dumps(event), orjson.dumps(good)])

    row = out.row(0, named=True)
    assert {name: row[name] for name in row["json_types"]} == {
        "event_id": '{"nested":[1,2]}',
        "event_type": None,
        "trigger_name": "1.5",
        "project_id": "123456",
        "task_id": "abc",
        "assignment_id": "x12",
        "task_name": "true",
        "task_status": None,
    }
    assert row["json_types"] == {
        "event_id": "object",
        "event_type": "null",
        "trigger_name": "float",
        "project_id": "integer",
        "task_id": "string",
        "assignment_id": "string",
        "task_name": "boolean",
        "task_status": None,  # absent
    }
    assert row["parse_error"] is None
    assert out.row(1, named=True)["task_id"] == str(world.ITEL_TASK_ID)


def test_integer_beyond_64_bits_is_kept_as_text():
    event = tracking_event(world.FIRST_ASSIGNMENT_ID, assignment_id=18446744073709551615)
    row = transformed([orjson.dumps(event)]).row(0, named=True)
    assert row["assignment_id"] == "18446744073709551615"
    assert row["json_types"]["assignment_id"] == "integer"


def test_bad_records_become_rows_with_a_parse_error():
    good = orjson.dumps(tracking_event(world.FIRST_ASSIGNMENT_ID))
    values = [
        good, b'{"event_id": "e1",', b'{"note": "caf\xe9"}', b"[1, 2]", b"null", b"", None, good,
    ]

    out = transformed(values)

    assert out.height == len(values)
    assert out["kafka_offset"].to_list() == list(range(100, 100 + len(values)))
    assert out["parse_error"].to_list() == [
        None, "malformed_json", "non_utf8", "not_an_object", "not_an_object",
        "malformed_json", "malformed_json", None,
    ]
    reasons = out["parse_error_reason"].to_list()
    assert reasons[1].startswith("record value is not valid JSON: ")
    assert reasons[2] == "record value is not valid UTF-8 (byte 13)"
    assert reasons[3] == "record value is a JSON array, expected an object"
    assert reasons[4] == "record value is a JSON null, expected an object"
    assert reasons[5] == reasons[6] == "record value is empty"
    failed = out.filter(pl.col("parse_error").is_not_null())
    fields = failed.select("event_id", "task_id", "task_json", "event_timestamp")
    assert fields.null_count().row(0) == (6, 6, 6, 6)
    assert failed["json_types"].struct.field("task_id").null_count() == 6
    assert out["event_id"][7] == out["event_id"][0]


def test_non_utf8_payload_survives_losslessly():
    value = b'{"event_id": "\xff\xfe\x00 cabinet"}'
    out = transformed([orjson.dumps(tracking_event(world.FIRST_ASSIGNMENT_ID)), value])
    payload = out["original_payload"][1]
    assert payload.startswith("base64:")
    assert base64.b64decode(payload.removeprefix("base64:")) == value
    assert out["payload_bytes"][1] == len(value)
    assert out["original_payload"][0].startswith("{")


def test_a_value_over_the_limit_is_kept_but_not_decoded():
    event = tracking_event(world.FIRST_ASSIGNMENT_ID, 1)
    event["task"]["technician_notes"] = "n" * 2_000
    value = orjson.dumps(event)
    not_text = b'{"event_id": "' + b"\xe9" * 2_000 + b'"}'
    small = orjson.dumps(tracking_event(world.FIRST_ASSIGNMENT_ID, 2))

    out = transform(raw_of([value, not_text, small]), worker="w", max_record_bytes=1_000)

    big, binary, fine = out.rows(named=True)
    assert big["parse_error"] == "oversized"
    assert big["parse_error_reason"] == (
        f"record value is {len(value)} bytes, over the limit of 1000 bytes; not decoded")
    assert big["event_id"] == event["event_id"]  # its top-level fields, for the error record
    assert big["task_json"] is None and big["task_technician_notes"] is None  # not its objects
    assert big["original_payload"] == value.decode()  # the error topic still gets the record
    assert big["payload_bytes"] == len(value)
    assert binary["parse_error"] == "oversized"
    assert base64.b64decode(binary["original_payload"].removeprefix("base64:")) == not_text
    assert fine["parse_error"] is None and fine["event_id"] == "evt-%d-000002" % world.FIRST_ASSIGNMENT_ID
    verdict = validate(out, expected_task_id=world.ITEL_TASK_ID, max_record_bytes=1_000)
    assert verdict.errors["error_type"].to_list() == ["oversized", "oversized"]
    assert verdict.errors["reason"][0] == (
        f"record value is {len(value)} bytes, over the limit of 1000 bytes")
    assert verdict.valid["event_id"].to_list() == [fine["event_id"]]


def test_timestamp_forms():
    stamps = [
        "2026-11-28T12:34:56Z",
        "2026-11-28T14:34:56.5+02:00",
        "2026-11-28T12:34:56.123456",
        "yesterday",
        1795869296789,
    ]
    values = [orjson.dumps(tracking_event(world.FIRST_ASSIGNMENT_ID, timestamp=s)) for s in stamps]
    assert transformed(values)["event_timestamp"].to_list() == [
        datetime(2026, 11, 28, 12, 34, 56, tzinfo=timezone.utc),
        datetime(2026, 11, 28, 12, 34, 56, 500000, tzinfo=timezone.utc),
        datetime(2026, 11, 28, 12, 34, 56, 123456, tzinfo=timezone.utc),
        None,
        None,
    ]


def test_task_fallbacks_when_task_is_absent_or_partial():
    without_task = tracking_event(world.FIRST_ASSIGNMENT_ID)
    del without_task["task"]
    partial = tracking_event(world.FIRST_ASSIGNMENT_ID)
    partial["task"] = {"cabinet_id": 77}
    out = transformed([orjson.dumps(without_task), orjson.dumps(partial)])
    assert out["task_json"].to_list() == [None, '{"cabinet_id":77}']
    assert out["task_cabinet_id"].to_list() == [None, "77"]
    assert out["task_technician_notes"].to_list() == [None, None]


def test_one_ingested_at_per_batch_in_utc_and_empty_batch():
    values = [orjson.dumps(tracking_event(world.FIRST_ASSIGNMENT_ID + i)) for i in range(3)]
    out = transform(raw_of(values), worker="itel_cabinet_api_worker")
    assert out["ingested_at"].n_unique() == 1
    assert abs(out["ingested_at"][0] - datetime.now(timezone.utc)).total_seconds() < 60
    assert out["worker"].unique().to_list() == ["itel_cabinet_api_worker"]
    assert transformed([]).schema == TRANSFORMED_SCHEMA
    assert transformed([b"{oops"]).schema == TRANSFORMED_SCHEMA


def nested(depth: int, inner: bytes = b"1") -> bytes:
    """JSON `{"a":{"a":...inner...}}`, `depth` objects deep, built without recursion."""
    return b'{"a":' * depth + inner + b"}" * depth


def test_json_nested_deeper_than_parsers_go_is_a_too_deep_row_never_a_crash():
    event = orjson.dumps(tracking_event(world.FIRST_ASSIGNMENT_ID))
    deep_task = event[:-1] + b',"task":' + nested(300) + b"}"  # parsed, but not writable back
    deep_unread = event[:-1] + b',"attachments":' + nested(300) + b"}"
    deep_event_id = event.replace(b'"event_id":', b'"event_id":' + b"[" * 300 + b"]" * 300
                                  + b',"was_event_id":')
    values = [b"[" * 100_000 + b"]" * 100_000, event[:-1] + b',"x":' + nested(40_000) + b"}",
              deep_task, deep_unread, deep_event_id]
    out = transformed(values)
    assert out.height == len(values)
    assert out["parse_error"].to_list() == ["too_deep", "too_deep", "too_deep", None, None]
    assert out["parse_error_reason"][0] == (
        "record value nests JSON deeper than 1024 levels; not decoded")
    assert "task or project object nests JSON deeper than 254 levels" in out["parse_error_reason"][2]
    assert out["event_id"][2] == tracking_event(world.FIRST_ASSIGNMENT_ID)["event_id"]
    assert out["original_payload"].to_list() == [v.decode() for v in values]

    verdict = validate(out, expected_task_id=world.ITEL_TASK_ID)
    assert verdict.valid["event_id"].to_list() == [
        tracking_event(world.FIRST_ASSIGNMENT_ID)["event_id"]]  # the unread deep field is fine
    errors = dict(zip(verdict.errors["kafka_offset"], verdict.errors["error_type"]))
    assert errors == {100: "too_deep", 101: "too_deep", 102: "too_deep", 104: "wrong_type"}
    [reason] = verdict.errors.filter(pl.col("kafka_offset") == 104)["reason"]
    assert reason.startswith("event_id is <nested deeper than 254 levels> (array)")


def test_a_replayed_truncated_payload_is_refused_undecoded():
    good = orjson.dumps(tracking_event(world.FIRST_ASSIGNMENT_ID))
    cut = good[:50] + b"...[payload truncated: first 50 of 900000 bytes kept; sha256 ab]"
    raw = raw_of([good, cut]).with_columns(
        payload_truncated=pl.Series([False, True]),
        original_payload_bytes=pl.Series([len(good), 900_000]))
    out = transform(raw, worker="w", max_record_bytes=60)  # the cut value is over it
    assert out["parse_error"].to_list() == ["oversized", "truncated_payload"]
    assert out["parse_error_reason"][1].startswith(
        "record value is only the start an error record kept of a 900000-byte payload")
    assert out["original_payload"][1] == cut.decode()
    verdict = validate(out, expected_task_id=world.ITEL_TASK_ID, max_record_bytes=60)
    assert verdict.errors["error_type"].to_list() == ["oversized", "truncated_payload"]
