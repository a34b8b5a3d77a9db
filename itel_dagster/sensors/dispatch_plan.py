"""Decides which Kafka offset ranges a worker's sensor dispatches on one tick, and how they are
grouped into runs (pure).

Two facts decide, never the sensor cursor alone: the consumer group's committed offsets (what is
done) and each partition's last run (what was tried). A range starts at the committed offset, so
nothing is skipped; a partition with a run in flight gets nothing, so nothing is dispatched twice
and order holds. A range whose last run ended before committing all of it is dispatched again
under a new run key: at once when that run succeeded (it stopped on purpose, e.g. an open circuit
breaker), after a growing pause when it failed.

Poison isolation: once a range has failed `isolate_after` runs in a row, it runs alone (no other
partition in its run) and is halved run by run: a failed half holds the bad record, a committed
half clears its records and leaves the bad one in the rest. A single record that still fails is
dead-lettered by a run of its own (stage `poison`) and the partition moves on; the other records
of the range are processed once, normally. Only a dead-letter run that keeps failing
(`max_attempts` runs) leaves its partition stuck, for an operator (`itel-dagster skip`).

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
    # Poison isolation: the run was a probe of [start, end) for a bad record known to lie before
    # suspect_end, or the dead-letter run of the record at `start`.
    suspect_end: int | None = None
    dead_letter: bool = False
    partitions: int = 1  # Kafka partitions the run covered (1: it ran alone)
    run_id: str | None = None
    failed_run_id: str | None = None  # an isolation run's: the failed run it follows up
    # The run process died (killed, out of memory, node lost) instead of an op failing.
    crashed: bool = False
    crashes_before: int = 0  # runs on this range that died in a row before that run


@dataclass(frozen=True)
class PlannedRange:
    """One partition's share of a run."""

    range: KafkaRange
    day: date  # UTC day of the records' Kafka timestamps: the run's partition key
    attempt: int = 1  # runs on this range so far, this one included
    failures_before: int = 0  # failed runs on this range in a row before this one
    # Poison isolation (see the module docstring): a probe runs alone; its bad record lies
    # before suspect_end. A dead-letter range is the one record the probes found.
    suspect_end: int | None = None
    dead_letter: bool = False
    failed_run_id: str | None = None  # the run whose failure is the dead letter's reason
    crashes_before: int = 0  # runs on this range that died in a row before this one

    @property
    def isolated(self) -> bool:
        return self.suspect_end is not None or self.dead_letter


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

    @property
    def dead_letter(self) -> bool:
        return any(r.dead_letter for r in self.ranges)

    def run_key(self, worker: str) -> str:
        """Unique per range set and attempt: the sensor never starts the same work twice."""
        spans = ",".join(f"{r.range.partition}:{r.range.start}-{r.range.end}" for r in self.ranges)
        key = f"{worker}:{self.topic}:{spans}"
        if self.dead_letter:
            key = f"{key}:dead-letter"
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
    # p -> (start, suspect_end): partitions whose bad record is being looked for
    isolating: dict[int, tuple[int, int]] = field(default_factory=dict)
    # Poison records dead-lettered in the last hour, when that many paused new isolations.
    isolation_paused: int = 0
    recovered: list[int] = field(default_factory=list)  # partitions whose last run died


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
    isolate_after: int = 2,
    isolation_paused: int = 0,
) -> DispatchPlan:
    """timestamp_at(partition, offset) -> ms; first_offset_at(partition, ms) -> offset or None.
    in_flight: partitions of runs that are queued or running.

    After its n-th failed run in a row, a range waits retry_pause_seconds * 2^(n-1); after
    `isolate_after` failed runs it is isolated (see the module docstring), without pauses.
    """
    plan = DispatchPlan(runs=[], redispatched=[], isolation_paused=isolation_paused)
    busy_lanes = {partition % lanes for partition in in_flight}
    ranges: list[PlannedRange] = []
    for p in sorted(progress, key=lambda x: x.partition):
        if p.partition % lanes in busy_lanes:
            continue
        if p.lag == 0:
            if p.committed is not None and p.committed < p.low:
                # Retention deleted every record the group had not handled, and nothing came
                # since: an empty run at the log start reports the loss and commits past it.
                ranges.append(PlannedRange(KafkaRange(topic, p.partition, p.low, p.low),
                                           utc_day(now * 1000)))
            continue
        last = last_runs.get(p.partition)
        if (last is not None and last.failed and last.crashed and p.next_offset == last.start
                and last.crashes_before + 1 < max_attempts):
            # A run that died is no verdict on its records: the same range again, at once, as
            # the same step (a probe stays a probe). Only a range that keeps killing its runs
            # (an out-of-memory record) goes on to pauses and isolation.
            timestamp = timestamp_at(p.partition, last.start)
            if timestamp is not None:
                ranges.append(PlannedRange(
                    KafkaRange(topic, p.partition, last.start, min(last.end, p.high)),
                    utc_day(timestamp), last.attempt + 1, last.failures_before,
                    suspect_end=last.suspect_end, dead_letter=last.dead_letter,
                    failed_run_id=last.failed_run_id, crashes_before=last.crashes_before + 1))
                plan.recovered.append(p.partition)
            continue
        step = _isolation_step(p, last, isolate_after)
        if step is not None:
            if step.dead_letter and step.failures_before:
                # A dead-letter run that failed: paused and bounded like any failed range.
                if step.failures_before >= max_attempts:
                    plan.stuck[p.partition] = (step.range.start, step.failures_before)
                    continue
                due = last_runs[p.partition].ended_at + \
                    retry_pause_seconds * 2 ** (step.failures_before - 1)
                if now < due:
                    plan.waiting[p.partition] = due - now
                    continue
            timestamp = timestamp_at(p.partition, step.range.start)
            if timestamp is None:
                continue  # the records vanished (retention) between reads; the next tick sees it
            planned = replace(step, range=replace(step.range, topic=topic), day=utc_day(timestamp))
            plan.isolating[p.partition] = (planned.range.start,
                                           planned.suspect_end or planned.range.end)
            ranges.append(planned)
            continue
        start = p.next_offset
        unfinished = last is not None and last.start <= start < last.end and not last.dead_letter
        attempt, failures = 1, 0
        if unfinished:
            attempt = last.attempt + 1
            # A failure counts against the range only if nothing of it was committed since.
            if last.failed and start == last.start:
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


def _isolation_step(p: PartitionProgress, last: LastRun | None,
                    isolate_after: int) -> PlannedRange | None:
    """The partition's next poison-isolation run, or None when it is not isolating.

    The topic and day of the returned range are placeholders; plan_dispatch fills them in.
    """
    if last is None:
        return None
    start = p.next_offset
    attempt = last.attempt + 1

    def _placeholder(first: int, end: int, attempt: int, failures: int, **isolation):
        return PlannedRange(KafkaRange("", p.partition, first, end), date.min, attempt, failures,
                            **isolation)

    bad: tuple[int, int] | None = None  # [first, end) known to hold a record that fails alone
    if last.dead_letter:
        if last.failed and start == last.start:
            return _placeholder(start, start + 1, attempt, last.failures_before + 1,
                                dead_letter=True, failed_run_id=last.failed_run_id)
        return None  # dead-lettered (or moved by an operator): the partition flows again
    if last.suspect_end is not None:
        if last.failed and start == last.start:
            bad = (start, last.end)
        elif not last.failed and start == last.end and start < last.suspect_end:
            bad = (start, last.suspect_end)  # the probe's records were fine: the rest holds it
        elif not last.failed and last.start <= start < last.end:
            # The probe stopped on purpose (an open breaker): the same probe again.
            return _placeholder(start, last.end, attempt, 0, suspect_end=last.suspect_end)
        else:
            return None  # finished, or an operator moved the offset: flow normally
    elif last.failed and start == last.start and last.failures_before + 1 >= isolate_after:
        if last.partitions > 1:
            # Which partition of the run holds it is unknown: each range runs alone first.
            return _placeholder(start, last.end, attempt, 0, suspect_end=last.end)
        bad = (start, last.end)
    if bad is None:
        return None
    first, end = bad
    if end - first == 1:
        return _placeholder(first, end, attempt, 0, dead_letter=True,
                            failed_run_id=last.run_id if last.failed else last.failed_run_id)
    return _placeholder(first, first + (end - first) // 2, attempt, 0, suspect_end=end,
                        failed_run_id=last.run_id if last.failed else last.failed_run_id)


def group_into_runs(
    ranges: list[PlannedRange], lanes: int, max_records_per_run: int
) -> list[PlannedRun]:
    """One run per lane and day. A run over the budget shares it out: small ranges whole, the
    rest an equal share each (every range at least one record). A shortened range only ends
    earlier: its start is still the committed offset, so nothing is skipped."""
    isolated: dict[int, PlannedRange] = {}
    for planned in ranges:
        if planned.isolated:  # alone in its run; its lane waits for it
            isolated.setdefault(planned.range.partition % lanes, planned)
    runs = [PlannedRun((planned,), lane) for lane, planned in sorted(isolated.items())]
    groups: dict[tuple[int, date], list[PlannedRange]] = {}
    for planned in ranges:
        if planned.range.partition % lanes in isolated:
            continue
        groups.setdefault((planned.range.partition % lanes, planned.day), []).append(planned)
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
