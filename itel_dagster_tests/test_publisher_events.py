"""The publisher's records without Kafka: counts, bad kinds, status order, time window, seeds."""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from itel_dagster.devstack.claimx_world import (
    FIRST_ASSIGNMENT_ID,
    ITEL_TASK_ID,
    ITEL_TASK_NAME,
    UNKNOWN_ASSIGNMENT_FLOOR,
    cabinet_id_for,
    project_id_for,
    technician_notes_for,
    technician_user_id_for,
)
from itel_dagster.devstack.publisher.bad_records import (
    BAD_KINDS,
    OVERSIZED_FIELD_BYTES,
    REQUIRED_FIELDS,
)
from itel_dagster.devstack.publisher.events import (
    BAD_KIND_HEADER,
    EVENT_ID_HEADER,
    STATUS_STEPS,
    generate_records,
    iso_timestamp,
    live_records,
)
from itel_dagster.stages.raw_batch import raw_batch_from_records
from itel_dagster.stages.transform import transform
from itel_dagster.stages.validate import DEFAULT_MAX_RECORD_BYTES, validate

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
NOW_MS = int(NOW.timestamp() * 1000)
STATUS_ORDER = [step.status for step in STATUS_STEPS]
BROKER_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588


def records(count=3_000, **options):
    return list(generate_records(count, now=NOW, **options))


def valid_events(published):
    return [orjson.loads(record.value) for record in published if record.bad_kind is None]


@pytest.fixture(scope="module")
def mixed():
    return records(6_000, bad_fraction=0.1, seed=7)


def test_count_and_exact_bad_fraction_spread_evenly(mixed):
    kinds = Counter(record.bad_kind for record in mixed)
    assert len(mixed) == 6_000
    assert kinds.pop(None) == 5_400
    assert kinds == {kind: 100 for kind in BAD_KINDS}


@pytest.mark.parametrize("count, fraction", [(601, 0.1), (97, 0.33), (10, 0.05), (5, 1.0)])
def test_bad_total_is_the_rounded_fraction_and_kinds_differ_by_at_most_one(count, fraction):
    kinds = Counter(r.bad_kind for r in records(count, bad_fraction=fraction))
    valid = kinds.pop(None, 0)
    assert valid + sum(kinds.values()) == count
    assert sum(kinds.values()) == round(count * fraction)
    per_kind = [kinds.get(kind, 0) for kind in BAD_KINDS]
    assert max(per_kind) - min(per_kind) <= 1


def test_no_bad_records_by_default():
    published = records(500)
    assert all(r.bad_kind is None for r in published)
    assert all(dict(r.headers).keys() == {EVENT_ID_HEADER} for r in published)


def test_each_assignment_goes_through_the_statuses_in_order(mixed):
    by_assignment = defaultdict(list)
    for event in valid_events(mixed):
        by_assignment[event["assignment_id"]].append(event)
    lengths = Counter(len(events) for events in by_assignment.values())
    assert 2.5 <= sum(k * n for k, n in lengths.items()) / len(by_assignment) <= 3.0
    for events in by_assignment.values():
        statuses = [event["task_status"] for event in events]
        assert statuses == STATUS_ORDER[: len(events)]
        timestamps = [event["timestamp"] for event in events]
        assert timestamps == sorted(timestamps) and len(set(timestamps)) == len(timestamps)
        for event, step in zip(events, STATUS_STEPS):
            assert event["event_type"] == step.event_type
            assert event["task"]["previous_status"] == step.previous_status
            assert event["task"]["status"] == step.status
            assert event["task"]["created_at"] == events[0]["timestamp"]
            completed = event["task_status"] == "completed"
            assert event["task"]["completed_at"] == (event["timestamp"] if completed else None)


def test_records_are_in_timestamp_order_within_the_window_and_never_in_the_future(mixed):
    stamps = [record.timestamp_ms for record in mixed]
    assert stamps == sorted(stamps)
    assert NOW_MS - 3 * 86_400_000 <= stamps[0] and stamps[-1] <= NOW_MS
    # Spread over the whole window, not bunched at one end.
    assert stamps[0] < NOW_MS - 2.9 * 86_400_000 and stamps[-1] > NOW_MS - 0.1 * 86_400_000


def test_record_timestamp_and_key_match_the_event(mixed):
    for record, event in zip(
        (r for r in mixed if r.bad_kind is None), valid_events(mixed), strict=True
    ):
        assert record.timestamp_ms == int(
            datetime.fromisoformat(event["timestamp"]).timestamp() * 1000
        )
        assert record.key == str(event["assignment_id"]).encode()
        assert record.event_id == event["event_id"]
        assert dict(record.headers) == {EVENT_ID_HEADER: event["event_id"].encode()}


def test_days_sets_the_window():
    stamps = [r.timestamp_ms for r in records(500, days=0.5)]
    assert NOW_MS - 43_200_000 <= min(stamps) and max(stamps) <= NOW_MS


def test_default_now_is_the_clock_and_nothing_is_in_the_future():
    before = datetime.now(timezone.utc)
    published = list(generate_records(300, days=1))
    latest = datetime.fromtimestamp(max(r.timestamp_ms for r in published) / 1000, timezone.utc)
    assert before - timedelta(days=1, seconds=1) <= latest <= datetime.now(timezone.utc)


def test_same_seed_same_records_other_seed_other_records():
    assert records(800, bad_fraction=0.2, seed=3) == records(800, bad_fraction=0.2, seed=3)
    other = records(800, bad_fraction=0.2, seed=4)
    assert {r.event_id for r in other}.isdisjoint({r.event_id for r in records(800, seed=3)})


def test_event_ids_are_unique(mixed):
    ids = [record.event_id for record in mixed if record.event_id is not None]
    assert len(ids) == len(set(ids)) >= 5_900


def test_valid_events_have_the_spec_shape_and_agree_with_claimx_world(mixed):
    for event in valid_events(mixed):
        assignment_id = event["assignment_id"]
        assert event["trigger_name"] == "iTel Cabinet Task Tracking"
        assert event["task_id"] == event["task"]["task_id"] == ITEL_TASK_ID
        assert event["task_name"] == ITEL_TASK_NAME
        assert isinstance(assignment_id, int) and event["task"]["assignment_id"] == assignment_id
        assert FIRST_ASSIGNMENT_ID <= assignment_id < UNKNOWN_ASSIGNMENT_FLOOR
        assert event["project_id"] == project_id_for(assignment_id)
        assert event["project"]["project_id"] == event["project_id"]
        assert event["task"]["cabinet_id"] == cabinet_id_for(assignment_id)
        assert event["task"]["technician_notes"] == technician_notes_for(assignment_id)
        assert event["task"]["assigned_to_user_id"] == technician_user_id_for(assignment_id)
        assert set(event["project"]) >= {"project_name", "policy_number", "loss_type", "address"}
        assert event["timestamp"].endswith("Z") and len(event["timestamp"]) == 24


def test_unknown_fraction_uses_ids_claimx_does_not_know_and_they_stay_valid():
    published = records(3_000, unknown_fraction=0.3)
    assert all(r.bad_kind is None for r in published)
    unknown = [e for e in valid_events(published) if e["assignment_id"] >= UNKNOWN_ASSIGNMENT_FLOOR]
    assert 0.2 < len(unknown) / len(published) < 0.4


def bad_ones(published, kind):
    chosen = [record for record in published if record.bad_kind == kind]
    assert chosen
    for record in chosen:
        assert dict(record.headers)[BAD_KIND_HEADER] == kind.encode()
    return chosen


def test_malformed_json_does_not_parse(mixed):
    for record in bad_ones(mixed, "malformed_json"):
        text = record.value.decode("utf-8")
        with pytest.raises(json.JSONDecodeError):
            json.loads(text)
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(record.value)


def test_non_utf8_does_not_decode(mixed):
    for record in bad_ones(mixed, "non_utf8"):
        with pytest.raises(UnicodeDecodeError):
            record.value.decode("utf-8")


def test_missing_field_lacks_exactly_one_required_field(mixed):
    dropped = Counter()
    for record in bad_ones(mixed, "missing_field"):
        event = orjson.loads(record.value)
        missing = [name for name in REQUIRED_FIELDS if name not in event]
        assert len(missing) == 1
        dropped[missing[0]] += 1
        assert record.event_id == event.get("event_id")
        assert (EVENT_ID_HEADER in dict(record.headers)) == ("event_id" in event)
    assert set(dropped) == set(REQUIRED_FIELDS)


def test_wrong_task_id_is_another_integer(mixed):
    for record in bad_ones(mixed, "wrong_task_id"):
        event = orjson.loads(record.value)
        assert isinstance(event["task_id"], int) and event["task_id"] != ITEL_TASK_ID


def test_wrong_type_has_a_non_numeric_id(mixed):
    for record in bad_ones(mixed, "wrong_type"):
        event = orjson.loads(record.value)
        wrong = [name for name in ("task_id", "assignment_id") if not isinstance(event[name], int)]
        assert len(wrong) == 1
        assert isinstance(event[wrong[0]], str) and not event[wrong[0]].isdigit()


def test_oversized_is_well_formed_over_the_pipeline_limit_and_under_the_broker_limit(mixed):
    assert DEFAULT_MAX_RECORD_BYTES < OVERSIZED_FIELD_BYTES < BROKER_DEFAULT_MAX_MESSAGE_BYTES
    for record in bad_ones(mixed, "oversized"):
        event = orjson.loads(record.value)
        assert len(event["task"]["technician_notes"]) == OVERSIZED_FIELD_BYTES
        assert event["task_id"] == ITEL_TASK_ID
        assert DEFAULT_MAX_RECORD_BYTES < len(record.value) < BROKER_DEFAULT_MAX_MESSAGE_BYTES


def test_the_pipeline_judges_each_record_as_the_publisher_meant_it():
    published = records(1_200, bad_fraction=0.25, unknown_fraction=0.2, seed=9)
    raw = raw_batch_from_records(
        ("topic", 0, offset, r.timestamp_ms, r.key, r.value) for offset, r in enumerate(published)
    )
    judged = validate(transform(raw, worker="test"), expected_task_id=ITEL_TASK_ID)
    assert len(judged.valid) == sum(r.bad_kind is None for r in published)
    for offset, error_type in judged.errors.select("kafka_offset", "error_type").iter_rows():
        assert error_type == published[offset].bad_kind


def test_invalid_arguments_are_refused():
    for options in ({"bad_fraction": 1.5}, {"unknown_fraction": -0.1}, {"days": 0}):
        with pytest.raises(ValueError):
            records(10, **options)


def test_iso_timestamp_is_utc_with_milliseconds():
    assert iso_timestamp(NOW_MS + 789) == "2026-11-28T12:00:00.789Z"
    assert iso_timestamp(0) == "1970-01-01T00:00:00.000Z"


def test_live_records_are_stamped_by_the_clock_and_keep_status_order():
    ticks = itertools.count(1_800_000_000_000, 7)
    stream = live_records(seed=5, bad_fraction=0.1, clock=lambda: next(ticks) / 1000)
    published = list(itertools.islice(stream, 1_200))
    kinds = Counter(record.bad_kind for record in published)
    assert kinds.pop(None) == 1_080 and kinds == {kind: 20 for kind in BAD_KINDS}
    by_assignment = defaultdict(list)
    for record in published:
        if record.bad_kind is None:
            by_assignment[record.key].append(record)
    for group in by_assignment.values():
        statuses = [orjson.loads(r.value)["task_status"] for r in group]
        assert statuses == STATUS_ORDER[: len(group)]
        stamps = [r.timestamp_ms for r in group]
        assert stamps == sorted(set(stamps))
    finished = [g for g in by_assignment.values() if len(g) == len(STATUS_STEPS)]
    assert len(finished) > len(by_assignment) / 2
    ids = [r.event_id for r in published if r.event_id is not None]
    assert len(set(ids)) == len(ids) >= 1_190
