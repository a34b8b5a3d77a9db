"""The sensor's dispatch decisions: from committed offsets, one range per partition, per day."""

from __future__ import annotations

from datetime import date

from itel_dagster.kafka.offsets import PartitionProgress
from itel_dagster.sensors.dispatch_plan import DispatchCursor, day_start_ms, plan_dispatch

DAY1 = day_start_ms(date(2026, 11, 27))
DAY2 = day_start_ms(date(2026, 11, 28))


def one_day(partition: int, offset: int) -> int:
    return DAY2 + offset


def never(partition: int, ms: int):
    return None


def plan(progress, cursor=None, in_flight=(), max_records=1000, ts=one_day, first=never, now=0.0):
    return plan_dispatch("t", progress, cursor or DispatchCursor(), set(in_flight), max_records,
                         ts, first, now=now, retry_pause_seconds=30, max_attempts=3)


def test_ranges_start_at_committed_offsets_and_cap_at_max_records():
    result = plan([PartitionProgress(0, None, 0, 2500), PartitionProgress(1, 40, 0, 45),
                   PartitionProgress(2, 7, 0, 7)])
    ranges = [(r.range.partition, r.range.start, r.range.end) for r in result.runs]
    assert ranges == [(0, 0, 1000), (1, 40, 45)]  # partition 2 has no lag
    assert all(r.day == date(2026, 11, 28) and r.attempt == 1 for r in result.runs)
    assert result.runs[0].run_key("w") == "w:t:0:0-1000"


def test_partition_with_a_run_in_flight_gets_nothing():
    result = plan([PartitionProgress(0, 0, 0, 10), PartitionProgress(1, 0, 0, 10)], in_flight={0})
    assert [r.range.partition for r in result.runs] == [1]


def test_range_never_spans_two_days():
    def two_days(partition, offset):
        return (DAY1 if offset < 30 else DAY2) + offset

    def first_at(partition, ms):
        return 30 if ms == DAY2 else None

    result = plan([PartitionProgress(0, 0, 0, 100)], ts=two_days, first=first_at)
    [run] = result.runs
    assert (run.range.start, run.range.end, run.day) == (0, 30, date(2026, 11, 27))


def test_next_tick_continues_after_a_committed_range():
    first = plan([PartitionProgress(0, None, 0, 150)], max_records=100)
    second = plan([PartitionProgress(0, 100, 0, 150)], cursor=first.cursor, max_records=100)
    assert [(r.range.start, r.range.end, r.attempt) for r in second.runs] == [(100, 150, 1)]
    assert second.redispatched == []


def test_uncommitted_range_without_a_run_is_dispatched_again_under_a_new_key():
    first = plan([PartitionProgress(0, 10, 0, 60)], now=1000)
    too_soon = plan([PartitionProgress(0, 10, 0, 80)], cursor=first.cursor, now=1010)
    assert too_soon.runs == [] and too_soon.waiting == {0: 20}
    retry = plan([PartitionProgress(0, 10, 0, 80)], cursor=first.cursor, now=1030)
    [run] = retry.runs
    assert (run.range.start, run.range.end, run.attempt) == (10, 60, 2)
    assert run.run_key("w") == "w:t:0:10-60:attempt-2"
    assert retry.redispatched == [run]
    # Cursor survives serialization (it is the sensor cursor string).
    cursor = DispatchCursor.parse(retry.cursor.serialize())
    assert plan([PartitionProgress(0, 10, 0, 80)], cursor=cursor, now=1080).runs == []  # pause doubled
    again = plan([PartitionProgress(0, 10, 0, 80)], cursor=cursor, now=1090)
    assert again.runs[0].attempt == 3


def test_a_range_that_keeps_failing_stops_its_partition_not_the_others():
    cursor = DispatchCursor(dispatched={0: (10, 60)}, attempts={0: 3}, dispatched_at={0: 0.0})
    result = plan([PartitionProgress(0, 10, 0, 60), PartitionProgress(1, 0, 0, 5)],
                  cursor=cursor, now=10_000)
    assert result.stuck == {0: (10, 3)}
    assert [r.range.partition for r in result.runs] == [1]
    # Once the offset moves (an operator commits past it), the partition flows again.
    moved = plan([PartitionProgress(0, 60, 0, 70)], cursor=cursor, now=10_000)
    assert [(r.range.start, r.attempt) for r in moved.runs] == [(60, 1)]


def test_records_below_the_low_watermark_are_not_waited_for():
    result = plan([PartitionProgress(0, 5, 20, 30)])
    assert (result.runs[0].range.start, result.runs[0].range.end) == (20, 30)
