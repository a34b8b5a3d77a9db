"""The records the dev-stack publisher sends: ClaimX events of the iTel Cabinet Repair Form task,
each assignment going assigned -> in_progress -> completed, mixed with a chosen share of bad records.

No Kafka here, and seeded: the same seed and `now` give the same records. A valid event never
disagrees with claimx_world, and no timestamp is later than `now`.
"""

from __future__ import annotations

import functools
import itertools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import NamedTuple

import orjson

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
from itel_dagster.devstack.publisher.bad_records import BAD_KINDS

TRIGGER_NAME = "iTel Cabinet Task Tracking"
BAD_KIND_HEADER = "itel_bad_kind"
EVENT_ID_HEADER = "event_id"


@dataclass(frozen=True)
class StatusStep:
    status: str
    event_type: str
    previous_status: str | None


# The life of an assignment, in order; each step is one event.
STATUS_STEPS = (
    StatusStep("assigned", "CUSTOM_TASK_ASSIGNED", None),
    StatusStep("in_progress", "CUSTOM_TASK_UPDATED", "assigned"),
    StatusStep("completed", "CUSTOM_TASK_COMPLETED", "in_progress"),
)
# Most assignments reach `completed` in the window; some are still open (1 or 2 events).
_STEPS_PER_ASSIGNMENT = (3, 2, 1)
_STEPS_WEIGHTS = (80, 12, 8)
# Assignments that ClaimX does not know are drawn from this many ids above the floor.
_UNKNOWN_ID_SPAN = 1_000_000

_LOSS_TYPES = ("water", "fire", "wind", "hail", "theft", "mold")
_STREETS = ("Oak St", "Maple Ave", "Cedar Ln", "Pine Rd", "Elm Dr", "Birch Ct", "Lake Blvd")
_CITIES = (
    ("Austin", "TX", "787"),
    ("Denver", "CO", "802"),
    ("Tampa", "FL", "336"),
    ("Columbus", "OH", "432"),
    ("Portland", "OR", "972"),
    ("Raleigh", "NC", "276"),
)
_UNIX_EPOCH = date(1970, 1, 1)
_DAY_MS = 24 * 3600 * 1000


class PublishedRecord(NamedTuple):
    key: bytes
    value: bytes
    timestamp_ms: int  # the Kafka record timestamp; equals the event's `timestamp`
    headers: list[tuple[str, bytes]]
    bad_kind: str | None  # one of BAD_KINDS, None for a valid event
    event_id: str | None


class _Assignment:
    """One assignment of the stream. Its fixed fields are built on its first record and let go
    after its last, so a long run holds only the assignments still open."""

    __slots__ = ("assignment_id", "created_ms", "records_left", "_fixed")

    def __init__(self, assignment_id: int, created_ms: int, records: int):
        self.assignment_id = assignment_id
        self.created_ms = created_ms  # when it was assigned
        self.records_left = records
        self._fixed: dict | None = None

    def fixed_fields(self) -> dict:
        """project_id, project and the task fields that no status step changes."""
        if self._fixed is None:
            assignment_id = self.assignment_id
            project_id = project_id_for(assignment_id)
            self._fixed = {
                "project_id": project_id,
                "project": project_for(project_id),
                "assigned_to_user_id": technician_user_id_for(assignment_id),
                # The dispatcher: claimx_world does not say who assigns, so any fixed id will do.
                "assigned_by_user_id": 10_000 + assignment_id * 37 % 500,
                "created_at": iso_timestamp(self.created_ms),
                "cabinet_id": cabinet_id_for(assignment_id),
                "technician_notes": technician_notes_for(assignment_id),
            }
        return self._fixed

    def record_built(self) -> None:
        self.records_left -= 1
        if self.records_left == 0:
            self._fixed = None


@dataclass(slots=True)
class _PlannedRecord:
    timestamp_ms: int
    assignment: _Assignment
    step: int  # index into STATUS_STEPS
    bad_kind: str | None


@functools.lru_cache(maxsize=64)
def _utc_date(days_since_epoch: int) -> str:
    return (_UNIX_EPOCH + timedelta(days=days_since_epoch)).isoformat()


def iso_timestamp(timestamp_ms: int) -> str:
    """Milliseconds since the epoch as the events write time: 2026-11-28T12:34:56.789Z."""
    # Arithmetic rather than datetime formatting: this runs twice per record and is 4x faster.
    seconds, millis = divmod(timestamp_ms, 1000)
    days, second_of_day = divmod(seconds, 86_400)
    hours, second_of_hour = divmod(second_of_day, 3_600)
    minutes, second = divmod(second_of_hour, 60)
    return f"{_utc_date(days)}T{hours:02d}:{minutes:02d}:{second:02d}.{millis:03d}Z"


def project_for(project_id: str) -> dict:
    """The event's `project` block, fixed by the project id (ClaimX's simulator has no projects)."""
    number = int(project_id)
    city, state, zip_prefix = _CITIES[number // 7 % len(_CITIES)]
    return {
        "project_id": project_id,
        "project_name": f"{_LOSS_TYPES[number % len(_LOSS_TYPES)].title()} loss {project_id}",
        "policy_number": f"POL-{number * 7919 % 100_000_000:08d}",
        "loss_type": _LOSS_TYPES[number % len(_LOSS_TYPES)],
        "address": {
            "street": f"{100 + number % 9_000} {_STREETS[number // 11 % len(_STREETS)]}",
            "city": city,
            "state": state,
            "postal_code": f"{zip_prefix}{number % 100:02d}",
            "country": "US",
        },
    }


def _event(planned: _PlannedRecord, event_id: str) -> dict:
    """The ClaimX event of one status step of an assignment."""
    assignment_id = planned.assignment.assignment_id
    fixed = planned.assignment.fixed_fields()
    status = STATUS_STEPS[planned.step]
    timestamp = iso_timestamp(planned.timestamp_ms)
    return {
        "trigger_name": TRIGGER_NAME,
        "event_id": event_id,
        "event_type": status.event_type,
        "project_id": fixed["project_id"],
        "task_id": ITEL_TASK_ID,
        "assignment_id": assignment_id,
        "task_name": ITEL_TASK_NAME,
        "task_status": status.status,
        "timestamp": timestamp,
        "task": {
            "assignment_id": assignment_id,
            "task_id": ITEL_TASK_ID,
            "status": status.status,
            "previous_status": status.previous_status,
            "assigned_to_user_id": fixed["assigned_to_user_id"],
            "assigned_by_user_id": fixed["assigned_by_user_id"],
            "created_at": fixed["created_at"],
            "completed_at": timestamp if status.status == "completed" else None,
            "cabinet_id": fixed["cabinet_id"],
            "technician_notes": fixed["technician_notes"],
        },
        "project": fixed["project"],
    }


class _Assignments:
    """Opens assignments with ids never used before in this stream, a share unknown to ClaimX."""

    def __init__(self, rng: random.Random, unknown_fraction: float):
        self._rng = rng
        self._unknown_fraction = unknown_fraction
        self._used_ids: set[int] = set()

    def open(self, created_ms: int, records: int) -> _Assignment:
        if self._rng.random() < self._unknown_fraction:
            low, high = UNKNOWN_ASSIGNMENT_FLOOR, UNKNOWN_ASSIGNMENT_FLOOR + _UNKNOWN_ID_SPAN
        else:
            low, high = FIRST_ASSIGNMENT_ID, UNKNOWN_ASSIGNMENT_FLOOR
        while (assignment_id := self._rng.randrange(low, high)) in self._used_ids:
            pass
        self._used_ids.add(assignment_id)
        return _Assignment(assignment_id, created_ms, records)


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value}")


def bad_kinds_for(bad_count: int, rng: random.Random) -> list[str]:
    """`bad_count` kinds, as even as can be (the remainder goes to kinds the RNG picks), shuffled."""
    kinds = list(BAD_KINDS)
    share, remainder = divmod(bad_count, len(kinds))
    chosen = kinds * share + rng.sample(kinds, remainder)
    rng.shuffle(chosen)
    return chosen


def _bad_record(
    kind: str, timestamp_ms: int, assignments: _Assignments, rng: random.Random
) -> _PlannedRecord:
    """A bad record stands alone: an assignment of its own, at a random status step."""
    step = rng.randrange(len(STATUS_STEPS))
    return _PlannedRecord(timestamp_ms, assignments.open(timestamp_ms, 1), step, kind)


def _plan(
    count: int, rng: random.Random, window: tuple[int, int], unknown_fraction: float,
    bad_fraction: float,
) -> list[_PlannedRecord]:
    """Every record of a counted run, in the order to publish them (by timestamp)."""
    start_ms, end_ms = window
    bad_kinds = bad_kinds_for(round(count * bad_fraction), rng)
    assignments = _Assignments(rng, unknown_fraction)
    planned: list[_PlannedRecord] = []
    valid_left = count - len(bad_kinds)
    while valid_left > 0:
        steps = min(valid_left, rng.choices(_STEPS_PER_ASSIGNMENT, _STEPS_WEIGHTS)[0])
        valid_left -= steps
        # Sorted draws plus their rank: strictly increasing, and the last still <= end_ms.
        draws = sorted(rng.randint(start_ms, end_ms - steps + 1) for _ in range(steps))
        times = [moment + rank for rank, moment in enumerate(draws)]
        assignment = assignments.open(times[0], steps)
        planned.extend(
            _PlannedRecord(moment, assignment, step, None) for step, moment in enumerate(times)
        )
    planned.extend(
        _bad_record(kind, rng.randint(start_ms, end_ms), assignments, rng) for kind in bad_kinds
    )
    # A stable sort: equal timestamps keep plan order, so an assignment's steps stay in order.
    planned.sort(key=lambda record: record.timestamp_ms)
    return planned


def _record(planned: _PlannedRecord, rng: random.Random) -> PublishedRecord:
    event_id = f"{rng.getrandbits(128):032x}"
    event = _event(planned, event_id)
    planned.assignment.record_built()
    headers: list[tuple[str, bytes]] = []
    if planned.bad_kind is None:
        value = orjson.dumps(event)
    else:
        bad = BAD_KINDS[planned.bad_kind](event, rng)
        value, event_id = bad.value, bad.event_id
        headers.append((BAD_KIND_HEADER, planned.bad_kind.encode()))
    if event_id is not None:
        headers.insert(0, (EVENT_ID_HEADER, event_id.encode()))
    return PublishedRecord(
        key=str(planned.assignment.assignment_id).encode(),
        value=value,
        timestamp_ms=planned.timestamp_ms,
        headers=headers,
        bad_kind=planned.bad_kind,
        event_id=event_id,
    )


def generate_records(
    count: int,
    seed: int = 0,
    days: float = 3.0,
    now: datetime | None = None,
    unknown_fraction: float = 0.0,
    bad_fraction: float = 0.0,
) -> Iterator[PublishedRecord]:
    """`count` records with timestamps spread over the `days` before `now` (an aware datetime,
    default: the clock), in timestamp order; round(count * bad_fraction) of them bad, spread
    evenly over BAD_KINDS.

    The same arguments (with the same `now`) give the same records. The plan is made now, the
    values as the iterator is read, so a long run does not hold its oversized records in memory.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if days <= 0:
        raise ValueError(f"days must be > 0, got {days}")
    _check_fraction("bad_fraction", bad_fraction)
    _check_fraction("unknown_fraction", unknown_fraction)
    end_ms = int((now or datetime.now(timezone.utc)).timestamp() * 1000)
    window = (end_ms - int(days * _DAY_MS), end_ms)
    rng = random.Random(seed)
    plan = _plan(count, rng, window, unknown_fraction, bad_fraction)
    return (_record(planned, rng) for planned in plan)


def live_records(
    seed: int | str = 0,
    unknown_fraction: float = 0.0,
    bad_fraction: float = 0.0,
    clock: Callable[[], float] = time.time,
) -> Iterator[PublishedRecord]:
    """An endless stream stamped with `clock()` as each record is built (the demo's "now").

    Assignments overlap: each record either opens an assignment or moves an open one a step on.
    Of the first n records int(n * bad_fraction) are bad, the kinds taken in turn.
    """
    _check_fraction("bad_fraction", bad_fraction)
    _check_fraction("unknown_fraction", unknown_fraction)
    rng = random.Random(seed)
    assignments = _Assignments(rng, unknown_fraction)
    latest_of_open: list[_PlannedRecord] = []  # the last record of each open assignment
    bad_kinds: Iterator[str] = iter(())
    for index in itertools.count():
        now_ms = int(clock() * 1000)
        if int((index + 1) * bad_fraction) > int(index * bad_fraction):
            kind = next(bad_kinds, None)
            if kind is None:
                bad_kinds = iter(bad_kinds_for(len(BAD_KINDS), rng))
                kind = next(bad_kinds)
            planned = _bad_record(kind, now_ms, assignments, rng)
        # One start for every two moves keeps about three events per assignment.
        elif len(latest_of_open) < 3 or rng.random() < 1 / 3:
            planned = _PlannedRecord(now_ms, assignments.open(now_ms, len(STATUS_STEPS)), 0, None)
            latest_of_open.append(planned)
        else:
            position = rng.randrange(len(latest_of_open))
            last = latest_of_open[position]
            # A later step never shares its predecessor's millisecond.
            moment = max(now_ms, last.timestamp_ms + 1)
            planned = _PlannedRecord(moment, last.assignment, last.step + 1, None)
            if planned.step < len(STATUS_STEPS) - 1:
                latest_of_open[position] = planned
            else:
                latest_of_open[position] = latest_of_open[-1]
                latest_of_open.pop()
        yield _record(planned, rng)
