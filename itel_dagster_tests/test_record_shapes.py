"""Record shapes that must not stall either worker, end to end on the real broker: values whose
error record would be larger than a Kafka record may be, keys that are not UTF-8, task ids sent as
numeric strings, JSON nested far deeper than any parser's stack.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random

import orjson
import polars as pl

from itel_dagster.devstack.publisher.events import PublishedRecord, generate_records
from itel_dagster_tests.test_dead_letter_replay import replay

TRACKING = "itel_cabinet_tracking_worker"
API = "itel_cabinet_api_worker"
WORKERS = (TRACKING, API)


def like(record: PublishedRecord, value: bytes, key: bytes | None = None) -> PublishedRecord:
    """A record in `record`'s place (same timestamp) with another value (and key)."""
    return record._replace(value=value, key=record.key if key is None else key,
                           bad_kind="shape", headers=[])


def huge_event(event: dict, size: int) -> bytes:
    """`event` with technician notes of quotes and line breaks, `size` bytes of JSON in all: the
    error record's JSON escapes each of them again, so its payload grows past `size`."""
    line = 'Cabinet "B" door hinge\nreplaced; '
    base = len(orjson.dumps({**event, "task": {**event["task"], "technician_notes": ""}}))
    notes = line * ((size - base) // (len(orjson.dumps(line)) - 2))
    return orjson.dumps({**event, "task": {**event["task"], "technician_notes": notes}})


def drain_both(pipeline) -> None:
    for worker in WORKERS:
        results = pipeline.drain(worker)
        assert results and all(r.success for r in results), worker
        assert pipeline.lag(worker) == 0, worker


def test_error_records_of_huge_values_are_truncated_published_and_not_replayed(
        pipeline, itel_simulator):
    good = list(generate_records(count=6, seed=91, days=0.01))
    big_json = huge_event(json.loads(good[2].value), 950_000)
    big_binary = bytes([0xFF]) + random.Random(91).randbytes(800_000)
    records = [*good[:2], like(good[2], big_json), *good[3:5], like(good[5], big_binary)]
    pipeline.produce(records)
    drain_both(pipeline)

    originals = {bytes(big_json), big_binary}
    for worker in WORKERS:
        messages = pipeline.consume_all(pipeline.workers[worker].error_topic)
        errors = [json.loads(m.value()) for m in messages]
        assert len(errors) == 2
        assert {e["error_type"] for e in errors} == {"oversized"}
        assert all(e["payload_truncated"] is True for e in errors)
        assert {(e["original_payload_bytes"], e["original_payload_sha256"]) for e in errors} == {
            (len(v), hashlib.sha256(v).hexdigest()) for v in originals}
        assert all(len(e["original_payload"].encode()) <= 262_144 for e in errors)
        assert all("[payload truncated:" in e["original_payload"] for e in errors)
        binary = next(e for e in errors if e["original_payload_bytes"] == len(big_binary))
        assert binary["original_payload"].startswith("base64:/")
        text = next(e for e in errors if e["original_payload_bytes"] == len(big_json))
        assert text["original_payload"].startswith(big_json[:1000].decode())
        assert all(dict(m.headers())["payload_truncated"] == b"true" for m in messages)
    assert pipeline.tracking_table().height == 4
    assert pipeline.sends_table().height == 4

    # A replay never sends the cut payload as the record: the same payload and facts come back
    # as a validate error that says so, and nothing reaches Delta or iTel.
    for worker in WORKERS:
        replay(pipeline, worker)
        errors = [json.loads(m.value())
                  for m in pipeline.consume_all(pipeline.workers[worker].error_topic)]
        first = [e for e in errors if e["attempt"] == 1]
        again = [e for e in errors if e["attempt"] == 2]
        assert len(again) == 2
        assert {(e["stage"], e["error_type"]) for e in again} == {("validate", "truncated_payload")}
        assert all("cannot be rebuilt" in e["error_message"] for e in again)
        facts = ("original_payload", "original_payload_bytes", "original_payload_sha256")
        assert {tuple(e[f] for f in facts) for e in again} == {
            tuple(e[f] for f in facts) for e in first}
    assert pipeline.tracking_table().height == 4
    assert pipeline.sends_table().height == 4
    assert len(itel_simulator.accepted_requests()) == 4


def with_field(value: bytes, name: str, raw_json: bytes) -> bytes:
    """`value` (a JSON object) with one more top-level field, given as raw JSON text."""
    return value[:-1] + b',"' + name.encode() + b'":' + raw_json + b"}"


def test_odd_but_possible_records_are_processed_or_dead_lettered_by_both_workers(
        pipeline, itel_simulator):
    good = list(generate_records(count=8, seed=92, days=0.01))
    events = {r.event_id: json.loads(r.value) for r in good}
    deep_300 = b'{"a":' * 300 + b"1" + b"}" * 300  # orjson reads it, cannot write it back
    as_string = {**events[good[0].event_id], "task_id": "32513"}
    records = [
        like(good[0], orjson.dumps(as_string)),
        like(good[1], good[1].value, key=b"\xff\xfe-binary-key"),  # processed as usual
        like(good[2], b"{not json", key=b"\xc3\x28"),
        like(good[3], b"[" * 100_000 + b"]" * 100_000),
        like(good[4], with_field(orjson.dumps({k: v for k, v in events[good[4].event_id].items()
                                               if k != "task"}), "task", deep_300)),
        like(good[5], with_field(good[5].value, "attachments", deep_300)),  # a field not read
        *good[6:],
    ]
    pipeline.produce(records)
    drain_both(pipeline)

    landed = {good[i].event_id for i in (0, 1, 5, 6, 7)}
    table = pipeline.tracking_table()
    assert set(table["event_id"]) == landed
    assert table.filter(pl.col("event_id") == good[0].event_id)["task_id"].to_list() == [32513]
    accepted = {r["idempotency_key"]: r["body"] for r in itel_simulator.accepted_requests()}
    assert set(accepted) == landed
    assert accepted[good[0].event_id]["task_id"] == 32513  # normalised to the integer

    for worker in WORKERS:
        messages = pipeline.consume_all(pipeline.workers[worker].error_topic)
        by_offset = {(m.partition(), json.loads(m.value())["kafka_offset"]): m for m in messages}
        assert len(messages) == 3
        kinds = sorted(json.loads(m.value())["error_type"] for m in messages)
        assert kinds == ["malformed_json", "too_deep", "too_deep"]
        [bad_key] = [m for m in by_offset.values()
                     if json.loads(m.value())["error_type"] == "malformed_json"]
        assert bad_key.key() == b"\xc3\x28"  # the input's key, byte for byte
        assert json.loads(bad_key.value())["kafka_key"] == "base64:" + base64.b64encode(
            b"\xc3\x28").decode()
        deep = [json.loads(m.value()) for m in messages
                if json.loads(m.value())["error_type"] == "too_deep"]
        assert any("deeper than 1024 levels" in e["error_message"] for e in deep)
        assert any("deeper than 254 levels" in e["error_message"] for e in deep)
        successes = [json.loads(m.value())
                     for m in pipeline.consume_all(pipeline.workers[worker].success_topic)]
        assert {s["event_id"] for s in successes} == landed
