"""Decides which Kafka offset ranges a worker's sensor dispatches on one tick, and how they are
grouped into runs (pure).

Two facts decide, never the sensor cursor alone: the consumer group's committed offsets (what is
done) and each partition's last run (what was tried). A range starts at the committed offset, so
nothing is skipped; a partition with a run in flight gets nothing, so nothing is dispatched twice
and order holds. A range whose last run ended before committing all of it is dispatched again
under a new run key: at once when that run succeeded (it stopped on purpose, e.g. an open circuit
breaker), after a growing pause when it failed, and never after `max_attempts` failed runs in a
row: that partition is then reported stuck instead of looping.

Ranges are grouped into runs by lane (partition % lanes) and UTC day: one run covers every
partition of its lane that has work, up to max_records_per_run records in all. A lane with a run
in flight gets no run, so the next one gathers everything that arrived meanwhile. Each run costs a
process start and its Dagster events; on a small machine one run per worker at a time (one lane)
does the most work per CPU second (`itel-dagster bench`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone

from itel_dagster.kafka.offsets import PartitionProgress


@dataclass(frozen=True)
class KafkaRange:
    topic: str
    partition: int
    start: int  # first offset
    end: int  # one past the last offset

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class LastRun:
    """The most recent finished run of a worker on one Kafka partition (from its run tags)."""

    start: int
    end: int
    attempt: int
    failed: bool
    failures_before: int  # failed runs on this range in a row before that run
    ended_at: float  # epoch seconds


@dataclass(frozen=True)
class PlannedRange:
    """One partition's share of a run."""

    range: KafkaRange
    day: date  # UTC day of the records' Kafka timestamps: the run's partition key
    attempt: int = 1  # runs on this range so far, this one included
    failures_before: int = 0  # failed runs on this range in a row before this one


@dataclass(frozen=True)
class PlannedRun:
    ranges: tuple[PlannedRange, ...]  # one per Kafka partition, in partition order
    lane: int = 0

    @property
    def day(self) -> date:
        return self.ranges[0].day

    @property
    def topic(self) -> str:
        return self.ranges[0].range.topic

    @property
    def attempt(self) -> int:
        return max(r.attempt for r in self.ranges)

    @property
    def failures_before(self) -> int:
        return max(r.failures_before for r in self.ranges)

    @property
    def records(self) -> int:
        return sum(r.range.size for r in self.ranges)

    def run_key(self, worker: str) -> str:
        """Unique per range set and attempt: the sensor never starts the same work twice."""
        spans = ",".join(f"{r.range.partition}:{r.range.start}-{r.range.end}" for r in self.ranges)
        key = f"{worker}:{self.topic}:{spans}"
        return key if self.attempt == 1 else f"{key}:attempt-{self.attempt}"


def utc_day(timestamp_ms: int) -> date:
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=timezone.utc).date()


def day_start_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1000)


@dataclass
class DispatchPlan:
    runs: list[PlannedRun]
    redispatched: list[PlannedRange]  # ranges whose last run failed before committing
    waiting: dict[int, float] = field(default_factory=dict)  # p -> seconds until re-dispatch
    stuck: dict[int, tuple[int, int]] = field(default_factory=dict)  # p -> (offset, failures)


def plan_dispatch(
    topic: str,
    progress: list[PartitionProgress],
    last_runs: dict[int, LastRun],
    in_flight: set[int],
    max_records_per_run: int,
    timestamp_at: Callable[[int, int], int | None],
    first_offset_at: Callable[[int, int], int | None],
    now: float = 0.0,
    retry_pause_seconds: float = 30.0,
    max_attempts: int = 5,
    lanes: int = 1,
) -> DispatchPlan:
    """timestamp_at(partition, offset) -> ms; first_offset_at(partition, ms) -> offset or None.
    in_flight: partitions of runs that are queued or running.

    After its n-th failed run in a row, a range waits retry_pause_seconds * 2^(n-1).
    """
    plan = DispatchPlan(runs=[], redispatched=[])
    busy_lanes = {partition % lanes for partition in in_flight}
    ranges: list[PlannedRange] = []
    for p in sorted(progress, key=lambda x: x.partition):
        if p.partition % lanes in busy_lanes or p.lag == 0:
            continue
        start = p.next_offset
        last = last_runs.get(p.partition)
        unfinished = last is not None and last.start <= start < last.end
        attempt, failures = 1, 0
        if unfinished:
            attempt = last.attempt + 1
            if last.failed:
                failures = last.failures_before + 1
                if failures >= max_attempts:
                    plan.stuck[p.partition] = (start, failures)
                    continue
                due = last.ended_at + retry_pause_seconds * 2 ** (failures - 1)
                if now < due:
                    plan.waiting[p.partition] = due - now
                    continue
        timestamp = timestamp_at(p.partition, start)
        if timestamp is None:
            continue  # the records vanished (retention) between reads; the next tick sees it
        day = utc_day(timestamp)
        end = min(p.high, start + max_records_per_run)
        # One run holds one UTC day, so its Dagster partition key is true.
        next_day_offset = first_offset_at(p.partition, day_start_ms(day + timedelta(days=1)))
        if next_day_offset is not None and start < next_day_offset < end:
            end = next_day_offset
        if unfinished:
            end = min(end, last.end)  # the same range again, under a new key
        planned = PlannedRange(KafkaRange(topic, p.partition, start, end), day, attempt, failures)
        ranges.append(planned)
        if failures:
            plan.redispatched.append(planned)
    plan.runs = group_into_runs(ranges, lanes, max_records_per_run)
    return plan


def group_into_runs(
    ranges: list[PlannedRange], lanes: int, max_records_per_run: int
) -> list[PlannedRun]:
    """One run per lane and day. A run over the budget shares it out: small ranges whole, the
    rest an equal share each (every range at least one record). A shortened range only ends
    earlier: its start is still the committed offset, so nothing is skipped."""
    groups: dict[tuple[int, date], list[PlannedRange]] = {}
    for planned in ranges:
        groups.setdefault((planned.range.partition % lanes, planned.day), []).append(planned)
    runs = []
    for (lane, _day), members in sorted(groups.items()):
        budget = max_records_per_run
        ends: dict[int, int] = {}
        by_size = sorted(members, key=lambda m: m.range.size)
        for i, member in enumerate(by_size):
            take = min(member.range.size, max(1, budget // (len(by_size) - i)))
            ends[member.range.partition] = member.range.start + take
            budget -= take
        shared = tuple(
            replace(m, range=replace(m.range, end=ends[m.range.partition]))
            for m in sorted(members, key=lambda m: m.range.partition)
        )
        runs.append(PlannedRun(shared, lane))
    return runs
