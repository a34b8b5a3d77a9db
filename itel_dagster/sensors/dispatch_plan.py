"""Decides which Kafka offset ranges a worker's sensor dispatches on one tick (pure).

Two facts decide, never the sensor cursor alone: the consumer group's committed offsets (what is
done) and each partition's last run (what was tried). A range starts at the committed offset, so
nothing is skipped; a partition with a run in flight gets nothing, so nothing is dispatched twice
and order holds. A range whose last run ended before committing all of it is dispatched again
under a new run key: at once when that run succeeded (it stopped on purpose, e.g. an open circuit
breaker), after a growing pause when it failed, and never after `max_attempts` failed runs in a
row: that partition is then reported stuck instead of looping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
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
class PlannedRun:
    range: KafkaRange
    day: date  # UTC day of the records' Kafka timestamps: the run's partition key
    attempt: int = 1
    failures_before: int = 0

    def run_key(self, worker: str) -> str:
        r = self.range
        key = f"{worker}:{r.topic}:{r.partition}:{r.start}-{r.end}"
        return key if self.attempt == 1 else f"{key}:attempt-{self.attempt}"


def utc_day(timestamp_ms: int) -> date:
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=timezone.utc).date()


def day_start_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1000)


@dataclass
class DispatchPlan:
    runs: list[PlannedRun]
    redispatched: list[PlannedRun]  # ranges whose last run failed before committing
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
) -> DispatchPlan:
    """timestamp_at(partition, offset) -> ms; first_offset_at(partition, ms) -> offset or None.

    After its n-th failed run in a row, a range waits retry_pause_seconds * 2^(n-1).
    """
    plan = DispatchPlan(runs=[], redispatched=[])
    for p in sorted(progress, key=lambda x: x.partition):
        if p.partition in in_flight or p.lag == 0:
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
        planned = PlannedRun(KafkaRange(topic, p.partition, start, end), day, attempt, failures)
        plan.runs.append(planned)
        if failures:
            plan.redispatched.append(planned)
    return plan
