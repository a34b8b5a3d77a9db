"""The sensor's dispatch decisions: from committed offsets and each partition's last run, grouped
into one run per lane and day."""

from __future__ import annotations

from datetime import date

from itel_dagster.kafka.offsets import PartitionProgress
from itel_dagster.sensors.dispatch_plan import LastRun, day_start_ms, plan_dispatch

DAY1 = day_start_ms(date(2026, 11, 27))
DAY2 = day_start_ms(date(2026, 11, 28))


def one_day(partition: int, offset: int) -> int:
    return DAY2 + offset


def never(partition: int, ms: int):
    return None


def plan(progress, last=None, in_flight=(), max_records=1000, ts=one_day, first=never, now=0.0,
         lanes=3, isolate_after=99):
    # lanes=3 with partitions 0-2: one range per run, each partition on its own. Poison
    # isolation is off unless a test sets isolate_after.
    return plan_dispatch("t", progress, last or {}, set(in_flight), max_records, ts, first,
                         now=now, retry_pause_seconds=30, max_attempts=3, lanes=lanes,
                         isolate_after=isolate_after)


def spans(result):
    return [[(r.range.partition, r.range.start, r.range.end) for r in run.ranges]
            for run in result.runs]


def only_ranges(result):
    return [r for run in result.runs for r in run.ranges]


def test_ranges_start_at_committed_offsets_and_cap_at_max_records():
    result = plan([PartitionProgress(0, None, 0, 2500), PartitionProgress(1, 40, 0, 45),
                   PartitionProgress(2, 7, 0, 7)])
    assert spans(result) == [[(0, 0, 1000)], [(1, 40, 45)]]  # partition 2 has no lag
    assert all(r.day == date(2026, 11, 28) and r.attempt == 1 for r in result.runs)
    assert result.runs[0].run_key("w") == "w:t:0:0-1000"


def test_partition_with_a_run_in_flight_gets_nothing():
    result = plan([PartitionProgress(0, 0, 0, 10), PartitionProgress(1, 0, 0, 10)], in_flight={0})
    assert spans(result) == [[(1, 0, 10)]]


def test_range_never_spans_two_days():
    def two_days(partition, offset):
        return (DAY1 if offset < 30 else DAY2) + offset

    def first_at(partition, ms):
        return 30 if ms == DAY2 else None

    result = plan([PartitionProgress(0, 0, 0, 100)], ts=two_days, first=first_at)
    [run] = result.runs
    assert spans(result) == [[(0, 0, 30)]] and run.day == date(2026, 11, 27)


def test_next_range_after_a_committed_one_is_a_first_attempt():
    last = {0: LastRun(0, 100, attempt=1, failed=False, failures_before=0, ended_at=0)}
    result = plan([PartitionProgress(0, 100, 0, 150)], last=last)
    assert [(r.range.start, r.range.end, r.attempt) for r in only_ranges(result)] == [(100, 150, 1)]
    assert result.redispatched == []


def test_failed_range_waits_then_goes_again_under_a_new_key():
    last = {0: LastRun(10, 60, attempt=1, failed=True, failures_before=0, ended_at=1000)}
    too_soon = plan([PartitionProgress(0, 10, 0, 80)], last=last, now=1010)
    assert too_soon.runs == [] and too_soon.waiting == {0: 20}
    retry = plan([PartitionProgress(0, 10, 0, 80)], last=last, now=1030)
    [run] = retry.runs
    [planned] = run.ranges
    assert (planned.range.start, planned.range.end, run.attempt, run.failures_before) == \
        (10, 60, 2, 1)
    assert run.run_key("w") == "w:t:0:10-60:attempt-2"
    assert retry.redispatched == [planned]
    # The second failure doubles the pause.
    again = {0: LastRun(10, 60, attempt=2, failed=True, failures_before=1, ended_at=2000)}
    assert plan([PartitionProgress(0, 10, 0, 80)], last=again, now=2059).runs == []
    assert plan([PartitionProgress(0, 10, 0, 80)], last=again, now=2060).runs[0].attempt == 3


def test_a_range_that_keeps_failing_stops_its_partition_not_the_others():
    last = {0: LastRun(10, 60, attempt=3, failed=True, failures_before=2, ended_at=0)}
    result = plan([PartitionProgress(0, 10, 0, 60), PartitionProgress(1, 0, 0, 5)],
                  last=last, now=10_000)
    assert result.stuck == {0: (10, 3)}
    assert spans(result) == [[(1, 0, 5)]]
    # Once the offset moves (the fixed run re-executed, or an operator commits past it), it flows.
    moved = plan([PartitionProgress(0, 60, 0, 70)], last=last, now=10_000)
    assert [(r.range.start, r.attempt) for r in only_ranges(moved)] == [(60, 1)]


def test_a_run_that_stopped_on_purpose_continues_at_once_with_a_new_key():
    # E.g. the API worker's breaker opened: the run succeeded but committed only up to 25.
    last = {0: LastRun(10, 60, attempt=1, failed=False, failures_before=0, ended_at=1000)}
    result = plan([PartitionProgress(0, 25, 0, 60)], last=last, now=1000)
    [run] = result.runs
    assert spans(result) == [[(0, 25, 60)]] and (run.attempt, run.failures_before) == (2, 0)
    assert result.redispatched == [] and result.waiting == {}


def test_records_below_the_low_watermark_are_not_waited_for():
    result = plan([PartitionProgress(0, 5, 20, 30)])
    assert spans(result) == [[(0, 20, 30)]]


def test_one_lane_gathers_every_partition_with_work_into_one_run():
    result = plan([PartitionProgress(0, 0, 0, 10), PartitionProgress(1, 5, 0, 5),
                   PartitionProgress(2, 3, 0, 9)], lanes=1)
    assert spans(result) == [[(0, 0, 10), (2, 3, 9)]]
    assert result.runs[0].run_key("w") == "w:t:0:0-10,2:3-9"
    assert result.runs[0].records == 16


def test_a_lane_with_a_run_in_flight_gets_nothing_even_on_its_idle_partitions():
    progress = [PartitionProgress(p, 0, 0, 10) for p in range(4)]
    assert spans(plan(progress, in_flight={1}, lanes=1)) == []
    # Two lanes: partitions 0 and 2 in lane 0, 1 and 3 in lane 1 (busy).
    assert spans(plan(progress, in_flight={1}, lanes=2)) == [[(0, 0, 10), (2, 0, 10)]]


def test_a_run_shares_its_record_budget_small_ranges_first():
    progress = [PartitionProgress(0, 0, 0, 5000), PartitionProgress(1, 0, 0, 100),
                PartitionProgress(2, 0, 0, 5000)]
    result = plan(progress, max_records=1000, lanes=1)
    # 100 for the small range, the other 900 split evenly; every start is the committed offset.
    assert spans(result) == [[(0, 0, 450), (1, 0, 100), (2, 0, 450)]]
    assert result.runs[0].records == 1000


def test_partitions_on_different_days_go_in_separate_runs_of_their_lane():
    def by_partition(partition, offset):
        return (DAY1 if partition == 0 else DAY2) + offset

    result = plan([PartitionProgress(0, 0, 0, 10), PartitionProgress(1, 0, 0, 10)],
                  ts=by_partition, lanes=1)
    assert spans(result) == [[(0, 0, 10)], [(1, 0, 10)]]
    assert [r.day for r in result.runs] == [date(2026, 11, 27), date(2026, 11, 28)]


def test_a_run_of_several_ranges_takes_the_highest_attempt_into_its_key():
    last = {0: LastRun(10, 60, attempt=2, failed=True, failures_before=1, ended_at=0),
            1: LastRun(0, 40, attempt=1, failed=False, failures_before=0, ended_at=0)}
    result = plan([PartitionProgress(0, 10, 0, 60), PartitionProgress(1, 40, 0, 50)],
                  last=last, now=10_000, lanes=1)
    [run] = result.runs
    assert [(r.range.partition, r.attempt, r.failures_before) for r in run.ranges] == \
        [(0, 3, 2), (1, 1, 0)]
    assert run.run_key("w") == "w:t:0:10-60,1:40-50:attempt-3"


# Poison isolation: a range that failed isolate_after runs is halved until its bad record is found.

def failed(start, end, failures_before=1, **isolation):
    return LastRun(start, end, attempt=failures_before + 1, failed=True,
                   failures_before=failures_before, ended_at=1000, run_id="run-f", **isolation)


def succeeded(start, end, **isolation):
    return LastRun(start, end, attempt=5, failed=False, failures_before=0, ended_at=1000,
                   run_id="run-s", **isolation)


def isolation_of(result):
    return [(r.range.partition, r.range.start, r.range.end, r.suspect_end, r.dead_letter)
            for run in result.runs for r in run.ranges]


def test_a_range_failing_again_after_its_pause_is_halved_at_once_without_another_pause():
    first_failure = {0: failed(0, 100, failures_before=0)}
    assert plan([PartitionProgress(0, 0, 0, 100)], last=first_failure, now=1001,
                isolate_after=2).waiting == {0: 29}
    result = plan([PartitionProgress(0, 0, 0, 100)], last={0: failed(0, 100)}, now=1001,
                  isolate_after=2)
    assert isolation_of(result) == [(0, 0, 50, 100, False)]
    assert result.isolating == {0: (0, 100)} and result.waiting == {}
    assert result.runs[0].ranges[0].failed_run_id == "run-f"


def test_a_failed_probe_halves_again_and_a_passed_probe_moves_to_the_rest():
    bad_first_half = plan([PartitionProgress(0, 0, 0, 100)],
                          last={0: failed(0, 50, suspect_end=100)}, isolate_after=2)
    assert isolation_of(bad_first_half) == [(0, 0, 25, 50, False)]
    # [0, 50) was committed: the bad record is in [50, 100), whose first half goes next.
    rest = plan([PartitionProgress(0, 50, 0, 100)],
                last={0: succeeded(0, 50, suspect_end=100, failed_run_id="run-f")},
                isolate_after=2)
    assert isolation_of(rest) == [(0, 50, 75, 100, False)]
    assert rest.runs[0].ranges[0].failed_run_id == "run-f"


def test_one_record_left_is_dead_lettered_by_a_run_of_its_own_then_the_partition_flows():
    by_failure = plan([PartitionProgress(0, 41, 0, 100)],
                      last={0: failed(41, 43, suspect_end=50)}, isolate_after=2)
    assert isolation_of(by_failure) == [(0, 41, 42, 43, False)]  # [41, 43) holds it
    assert isolation_of(plan([PartitionProgress(0, 41, 0, 100)],
                             last={0: failed(41, 42, suspect_end=43)}, isolate_after=2)) == \
        [(0, 41, 42, None, True)]
    by_elimination = plan([PartitionProgress(0, 42, 0, 100)],
                          last={0: succeeded(41, 42, suspect_end=43, failed_run_id="run-f")},
                          isolate_after=2)
    [run] = by_elimination.runs
    assert isolation_of(by_elimination) == [(0, 42, 43, None, True)]
    assert run.dead_letter and run.run_key("w").endswith(":dead-letter:attempt-6")
    assert run.ranges[0].failed_run_id == "run-f"
    after = plan([PartitionProgress(0, 43, 0, 100)],
                 last={0: succeeded(42, 43, dead_letter=True)}, isolate_after=2)
    assert isolation_of(after) == [(0, 43, 100, None, False)]
    assert after.isolating == {}


def test_a_failing_dead_letter_run_is_paused_then_stuck():
    last = {0: failed(42, 43, failures_before=0, dead_letter=True, failed_run_id="run-p")}
    waiting = plan([PartitionProgress(0, 42, 0, 100)], last=last, now=1010, isolate_after=2)
    assert waiting.runs == [] and waiting.waiting == {0: 20}
    again = plan([PartitionProgress(0, 42, 0, 100)], last=last, now=1030, isolate_after=2)
    assert isolation_of(again) == [(0, 42, 43, None, True)]
    assert again.runs[0].ranges[0].failed_run_id == "run-p"
    stuck = {0: failed(42, 43, failures_before=2, dead_letter=True)}
    assert plan([PartitionProgress(0, 42, 0, 100)], last=stuck, now=10_000,
                isolate_after=2).stuck == {0: (42, 3)}


def test_a_run_of_several_partitions_is_split_each_range_alone_and_its_lane_waits():
    run = dict(failures_before=1, partitions=3)
    last = {p: failed(0, 10, **run) for p in range(3)}
    progress = [PartitionProgress(p, 0, 0, 10) for p in range(3)]
    result = plan(progress, last=last, lanes=1, isolate_after=2)
    assert isolation_of(result) == [(0, 0, 10, 10, False)]  # alone; 1 and 2 wait their turn
    # Partition 0 passed alone: the next tick sends partition 1 alone, not a normal run of 0.
    last[0] = succeeded(0, 10, suspect_end=10)
    progress[0] = PartitionProgress(0, 10, 0, 15)
    assert isolation_of(plan(progress, last=last, lanes=1, isolate_after=2)) == \
        [(1, 0, 10, 10, False)]


def test_a_probe_stopped_on_purpose_goes_again_and_an_operator_move_ends_isolation():
    stopped = plan([PartitionProgress(0, 30, 0, 100)],
                   last={0: succeeded(25, 50, suspect_end=100)}, isolate_after=2)
    assert isolation_of(stopped) == [(0, 30, 50, 100, False)]
    # An operator skipped offset 25 (committed 26) after the probe failed: normal again.
    moved = plan([PartitionProgress(0, 26, 0, 100)],
                 last={0: failed(25, 50, suspect_end=100)}, isolate_after=2, now=10_000)
    assert isolation_of(moved) == [(0, 26, 50, None, False)]
    assert moved.runs[0].failures_before == 0


def test_a_partition_whose_unhandled_records_all_expired_gets_an_empty_run_at_the_log_start():
    # Committed 5, retention moved the log start to 12, nothing new: lag 0 but 7 records lost.
    result = plan([PartitionProgress(0, 5, 12, 12), PartitionProgress(1, 12, 12, 12)],
                  now=DAY2 / 1000)
    assert spans(result) == [[(0, 12, 12)]]
    assert result.runs[0].day == date(2026, 11, 28)


def test_a_range_whose_run_died_goes_again_at_once_as_the_same_step():
    died = LastRun(10, 60, attempt=1, failed=True, failures_before=0, ended_at=1000,
                   crashed=True, run_id="run-k")
    result = plan([PartitionProgress(0, 10, 0, 80)], last={0: died}, now=1001, isolate_after=2)
    assert spans(result) == [[(0, 10, 60)]] and result.waiting == {} and result.recovered == [0]
    [planned] = only_ranges(result)
    assert (planned.attempt, planned.failures_before, planned.crashes_before) == (2, 0, 1)
    # A probe that died is the same probe again (its half says nothing about the record).
    probe = LastRun(10, 35, attempt=4, failed=True, failures_before=0, ended_at=1000,
                    crashed=True, suspect_end=60, crashes_before=1)
    assert isolation_of(plan([PartitionProgress(0, 10, 0, 80)], last={0: probe}, now=1001,
                             isolate_after=2)) == [(0, 10, 35, 60, False)]


def test_a_range_that_keeps_killing_its_runs_is_then_treated_as_failing():
    # max_attempts is 3: the third death in a row is counted as a failure (an out-of-memory record).
    dying = LastRun(10, 60, attempt=3, failed=True, failures_before=1, ended_at=1000,
                    crashed=True, crashes_before=2, partitions=1, run_id="run-k")
    result = plan([PartitionProgress(0, 10, 0, 80)], last={0: dying}, now=1001, isolate_after=2)
    assert result.recovered == [] and isolation_of(result) == [(0, 10, 35, 60, False)]
