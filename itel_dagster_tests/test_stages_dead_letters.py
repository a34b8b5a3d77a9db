"""Dead letters: error records read back from an error topic become the original records again."""

from __future__ import annotations

from datetime import datetime, timezone

import orjson
import polars as pl

from itel_dagster.devstack import claimx_world as world
from itel_dagster.kafka.range_reader import KafkaRecord
from itel_dagster_bench.stages_throughput import TOPIC, tracking_event
from itel_dagster.stages.dead_letters import (
    FAILED_AGAIN,
    REPLAY_LOG_SCHEMA,
    REPLAYED,
    error_days,
    parse_dead_letters,
    replay_batch,
    replay_log,
    replay_originals,
    select_for_replay,
    with_next_attempt,
)
from itel_dagster.stages.error_records import (
    bytes_of,
    error_record_messages,
    error_records,
    stage_failures,
)
from itel_dagster.stages.raw_batch import raw_batch_from_records
from itel_dagster.stages.transform import transform
from itel_dagster.stages.validate import validate

WORKER = "itel_cabinet_tracking_worker"
ERROR_TOPIC = f"{TOPIC}.errors"
KAFKA_MS = 1_795_869_296_789  # 2026-11-28T12:34:56.789Z
ERROR_MS = 1_795_900_000_000  # 2026-11-28T21:06:40Z
NOT_UTF8 = b'{"event_id": "e-\xff"}'
RUN = "run-1"


def inputs() -> list[KafkaRecord]:
    good = orjson.dumps(tracking_event(world.FIRST_ASSIGNMENT_ID))
    other = orjson.dumps(tracking_event(world.FIRST_ASSIGNMENT_ID + 1))
    wrong = orjson.dumps(tracking_event(world.FIRST_ASSIGNMENT_ID + 2, task_id="abc"))
    values = [good, other, wrong, NOT_UTF8, b"base64:not really"]
    return [KafkaRecord(TOPIC, 1, 700 + i, KAFKA_MS + i, f"key-{i}".encode() if i != 1 else None, v)
            for i, v in enumerate(values)]


def on_error_topic(errors: pl.DataFrame, first_offset: int = 40) -> list[KafkaRecord]:
    """The error records as a reader of the error topic gets them."""
    return [KafkaRecord(ERROR_TOPIC, 0, first_offset + i, ERROR_MS, key, value)
            for i, (key, value, _headers) in enumerate(error_record_messages(errors))]


def dead_lettered(records: list[KafkaRecord]) -> pl.DataFrame:
    """Error records of `records`: validate's, and delta_write's for the valid ones."""
    events = transform(raw_batch_from_records(records), worker=WORKER)
    result = validate(events, world.ITEL_TASK_ID)
    return pl.concat([
        error_records(result.errors, WORKER, "validate"),
        stage_failures(result.valid, WORKER, "delta_write", "delta_unavailable", "disk gone"),
    ])


def test_error_records_replay_the_original_records_byte_for_byte():
    records = inputs()
    dead_letters = parse_dead_letters(on_error_topic(dead_lettered(records)))

    assert dead_letters["unreadable"].null_count() == dead_letters.height == len(records)
    assert dead_letters["error_record"].to_list()[:2] == [f"{ERROR_TOPIC}:0:40", f"{ERROR_TOPIC}:0:41"]
    assert set(dead_letters["attempt"]) == {1}
    originals = replay_originals(select_for_replay(dead_letters, [], set()))
    batch = replay_batch(originals)

    expected = raw_batch_from_records(records)
    assert batch.drop("attempt", "payload_truncated", "original_payload_bytes").sort(
        "kafka_offset").equals(expected)
    assert not batch["payload_truncated"].any()
    assert batch["value"].to_list()[3] == NOT_UTF8  # non-UTF-8 back from base64
    assert batch["value"].to_list()[4] == b"base64:not really"  # a text that only looks like it
    assert set(batch["attempt"]) == {2}


def test_filter_by_error_type_skip_replayed_and_cap():
    dead_letters = parse_dead_letters(on_error_topic(dead_lettered(inputs())))
    delta_failures = select_for_replay(dead_letters, ["delta_unavailable"], set())
    assert set(delta_failures["error_type"]) == {"delta_unavailable"}
    assert delta_failures.height == 2

    done = {delta_failures["error_record"][0]}
    rest = select_for_replay(dead_letters, ["delta_unavailable"], done)
    assert rest["error_record"].to_list() == delta_failures["error_record"].to_list()[1:]
    assert select_for_replay(dead_letters, [], set(), max_records=3).height == 3


def test_unreadable_error_records_are_kept_with_a_reason_never_replayed():
    records = [
        KafkaRecord(ERROR_TOPIC, 2, 5, ERROR_MS, None, b"not json"),
        KafkaRecord(ERROR_TOPIC, 2, 6, -1, None, b"[1, 2]"),
        KafkaRecord(ERROR_TOPIC, 2, 7, ERROR_MS, None, orjson.dumps({"error_type": "x"})),
    ]
    dead_letters = parse_dead_letters(records)
    assert dead_letters["unreadable"].to_list() == [
        dead_letters["unreadable"][0], "error record is not a JSON object",
        "error record lacks the original coordinates kafka_topic, kafka_partition, kafka_offset"]
    assert dead_letters["unreadable"][0].startswith("error record is not JSON")
    assert select_for_replay(dead_letters, [], set()).is_empty()


def test_a_record_failed_twice_is_replayed_once_at_its_latest_attempt():
    [first] = [r for r in inputs() if r.offset == 700]
    once = dead_lettered([first])
    twice = once.with_columns(pl.lit(2, pl.Int64).alias("attempt"))
    dead_letters = parse_dead_letters(on_error_topic(pl.concat([once, twice])))
    originals = replay_originals(select_for_replay(dead_letters, [], set()))
    assert originals.height == 1
    assert originals["next_attempt"].to_list() == [3]
    assert originals["replayed_from"].to_list() == [f"{ERROR_TOPIC}:0:41"]


def test_failures_of_a_replay_carry_the_next_attempt_and_outcomes_are_logged():
    dead_letters = parse_dead_letters(on_error_topic(dead_lettered(inputs())))
    selected = select_for_replay(dead_letters, [], set())
    originals = replay_originals(selected)
    events = transform(replay_batch(originals), worker=WORKER)
    result = validate(events, world.ITEL_TASK_ID)
    failed = with_next_attempt(error_records(result.errors, WORKER, "validate"), originals)
    assert failed.height == 3 and set(failed["attempt"]) == {2}

    at = datetime(2026, 11, 29, 8, 0, tzinfo=timezone.utc)
    log = replay_log(selected, result.valid, failed, RUN, at)
    assert log.schema == REPLAY_LOG_SCHEMA
    assert dict(log.group_by("outcome").len().rows()) == {REPLAYED: 2, FAILED_AGAIN: 3}
    again = log.filter(pl.col("outcome") == FAILED_AGAIN)
    assert set(again["new_attempt"]) == {2}
    assert set(again["new_error_type"]) == set(result.errors["error_type"])
    assert log["replay_key"].str.ends_with(f":{RUN}").all()
    assert error_days(selected) == [(2026, 11, 28)]
    assert set(log.select("year", "month", "day").rows()) == {(2026, 11, 28)}


def test_bytes_of_a_payload_or_key_text():
    assert bytes_of(None) is None
    assert bytes_of('{"a": 1}') == b'{"a": 1}'
    assert bytes_of("base64:/w==") == b"\xff"
    assert bytes_of("base64:YWJj") == b"base64:YWJj"  # "abc" is UTF-8: literal text


def test_a_truncated_payload_is_never_replayed_as_the_record():
    big = orjson.dumps(tracking_event(world.FIRST_ASSIGNMENT_ID, notes="n" * 5_000, task_id="x"))
    record = KafkaRecord(TOPIC, 0, 900, KAFKA_MS, b"\xffkey", big)
    errors = dead_lettered([record])
    on_topic = [KafkaRecord(ERROR_TOPIC, 0, 40, ERROR_MS, key, value)
                for key, value, _ in error_record_messages(errors, max_payload_bytes=2_000)]
    dead_letters = parse_dead_letters(on_topic)
    assert dead_letters["payload_truncated"].to_list() == [True]
    originals = replay_originals(select_for_replay(dead_letters, [], set()))
    batch = replay_batch(originals)
    assert batch["kafka_key"].to_list() == dead_letters["kafka_key"].to_list()  # base64 key kept

    result = validate(transform(batch, worker=WORKER), world.ITEL_TASK_ID)
    assert result.valid.is_empty()
    again = with_next_attempt(error_records(result.errors, WORKER, "validate"), originals)
    [row] = again.rows(named=True)
    assert (row["stage"], row["error_type"], row["attempt"]) == ("validate", "truncated_payload", 2)
    assert "only the start an error record kept of a" in row["error_message"]
    # The new error record is the old one's payload and facts, not a hash of the cut text.
    assert row["event_id"] == errors["event_id"][0]
    [(key, value, _)] = error_record_messages(again, max_payload_bytes=2_000)
    republished, first = orjson.loads(value), orjson.loads(on_topic[0].value)
    assert key == b"\xffkey"
    for name in ("original_payload", "original_payload_bytes", "original_payload_sha256",
                 "payload_truncated"):
        assert republished[name] == first[name]
    assert first["original_payload_bytes"] == len(big)
