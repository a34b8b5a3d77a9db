"""Decides which Kafka offset ranges a worker's sensor dispatches on one tick (pure).

The consumer group's committed offsets are the truth of what is done; the cursor only remembers
what was dispatched. A range starts at the committed offset, so nothing is skipped; a partition
with a run in flight gets nothing, so nothing is dispatched twice and order holds. A range whose
run ended without committing (failed after its retries) is dispatched again under a new run key,
after a growing pause, and at most `max_attempts` times: a range that keeps failing stops its
partition (reported as stuck) instead of looping.
"""

from __future__ import annotations

import json
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
class PlannedRun:
    range: KafkaRange
    day: date  # UTC day of the records' Kafka timestamps: the run's partition key
    attempt: int

    def run_key(self, worker: str) -> str:
        r = self.range
        key = f"{worker}:{r.topic}:{r.partition}:{r.start}-{r.end}"
        return key if self.attempt == 1 else f"{key}:attempt-{self.attempt}"


@dataclass
class DispatchCursor:
    """Per partition: the last dispatched range, which attempt it was, and when."""

    dispatched: dict[int, tuple[int, int]] = field(default_factory=dict)  # p -> (start, end)
    attempts: dict[int, int] = field(default_factory=dict)
    dispatched_at: dict[int, float] = field(default_factory=dict)  # p -> epoch seconds

    @classmethod
    def parse(cls, raw: str | None) -> "DispatchCursor":
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(
            dispatched={int(p): tuple(v) for p, v in data.get("dispatched", {}).items()},
            attempts={int(p): int(v) for p, v in data.get("attempts", {}).items()},
            dispatched_at={int(p): float(v) for p, v in data.get("dispatched_at", {}).items()},
        )

    def serialize(self) -> str:
        return json.dumps({
            "dispatched": {str(p): list(v) for p, v in sorted(self.dispatched.items())},
            "attempts": {str(p): v for p, v in sorted(self.attempts.items())},
            "dispatched_at": {str(p): v for p, v in sorted(self.dispatched_at.items())},
        })


def utc_day(timestamp_ms: int) -> date:
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=timezone.utc).date()


def day_start_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1000)


@dataclass
class DispatchPlan:
    runs: list[PlannedRun]
    cursor: DispatchCursor
    redispatched: list[PlannedRun]  # ranges whose earlier run ended without committing
    waiting: dict[int, float] = field(default_factory=dict)  # p -> seconds until re-dispatch
    stuck: dict[int, tuple[int, int]] = field(default_factory=dict)  # p -> (offset, attempts)


def plan_dispatch(
    topic: str,
    progress: list[PartitionProgress],
    cursor: DispatchCursor,
    in_flight: set[int],
    max_records_per_run: int,
    timestamp_at: Callable[[int, int], int | None],
    first_offset_at: Callable[[int, int], int | None],
    now: float = 0.0,
    retry_pause_seconds: float = 30.0,
    max_attempts: int = 5,
) -> DispatchPlan:
    """timestamp_at(partition, offset) -> ms; first_offset_at(partition, ms) -> offset or None.

    A failed range waits retry_pause_seconds * 2^(attempt-1) before its next attempt.
    """
    runs: list[PlannedRun] = []
    redispatched: list[PlannedRun] = []
    waiting: dict[int, float] = {}
    stuck: dict[int, tuple[int, int]] = {}
    new_cursor = DispatchCursor(dict(cursor.dispatched), dict(cursor.attempts),
                                dict(cursor.dispatched_at))
    for p in sorted(progress, key=lambda x: x.partition):
        if p.partition in in_flight or p.lag == 0:
            continue
        start = p.next_offset
        previous = cursor.dispatched.get(p.partition)
        unfinished = previous is not None and previous[0] <= start < previous[1]
        if unfinished:
            attempts_so_far = cursor.attempts.get(p.partition, 1)
            if attempts_so_far >= max_attempts:
                stuck[p.partition] = (start, attempts_so_far)
                continue
            due = cursor.dispatched_at.get(p.partition, 0.0) + retry_pause_seconds * 2 ** (
                attempts_so_far - 1)
            if now < due:
                waiting[p.partition] = due - now
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
        attempt = cursor.attempts.get(p.partition, 1) + 1 if unfinished else 1
        if unfinished:
            # Same start as a dispatched range that never committed: keep the old range bounds
            # only if they still hold one day; a new key makes Dagster accept the request.
            end = min(end, previous[1])
        planned = PlannedRun(KafkaRange(topic, p.partition, start, end), day, attempt)
        runs.append(planned)
        if unfinished:
            redispatched.append(planned)
        new_cursor.dispatched[p.partition] = (start, end)
        new_cursor.attempts[p.partition] = attempt
        new_cursor.dispatched_at[p.partition] = now
    return DispatchPlan(runs, new_cursor, redispatched, waiting, stuck)
