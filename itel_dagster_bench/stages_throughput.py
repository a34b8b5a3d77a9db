"""Throughput of transform + validate on tracking events of about 1.6 KB.

    python -m itel_dagster_bench.stages_throughput [--events N] [--batch-size N] [--bad-every N]

Prints events/s per stage and in total (best of --repeat runs). `tracking_event` is also the
tests' source of well-formed events, consistent with the dev stack's ClaimX world.
"""

from __future__ import annotations

import argparse
import time

import orjson

from itel_dagster.devstack import claimx_world as world
from itel_dagster.stages.raw_batch import raw_batch_from_records
from itel_dagster.stages.transform import transform
from itel_dagster.stages.validate import validate

TOPIC = "itel.cabinet.task.tracking"
TRIGGER_NAME = "iTel Cabinet Task Tracking"
_BASE_TIMESTAMP_MS = 1_795_869_296_789  # 2026-11-28T12:34:56.789Z


def tracking_event(assignment_id: int, sequence: int = 0, /, **overrides) -> dict:
    """One CUSTOM_TASK_COMPLETED event of the iTel task; `overrides` replace top-level fields."""
    task = world.claimx_task(assignment_id)
    project_id = world.project_id_for(assignment_id)
    event = {
        "trigger_name": TRIGGER_NAME,
        "event_id": f"evt-{assignment_id}-{sequence:06d}",
        "event_type": "CUSTOM_TASK_COMPLETED",
        "project_id": project_id,
        "task_id": world.ITEL_TASK_ID,
        "assignment_id": assignment_id,
        "task_name": world.ITEL_TASK_NAME,
        "task_status": "completed",
        "timestamp": "2026-11-28T12:34:56.789Z",
        "task": {
            "assignment_id": assignment_id,
            "task_id": world.ITEL_TASK_ID,
            "status": "completed",
            "previous_status": "in_progress",
            "assigned_to_user_id": task["assigned_to_user_id"],
            "assigned_by_user_id": task["assigned_by_user_id"],
            "created_at": task["created_at"],
            "completed_at": task["updated_at"],
            "cabinet_id": world.cabinet_id_for(assignment_id),
            "technician_notes": world.technician_notes_for(assignment_id),
        },
        "project": {
            "project_id": project_id,
            "project_name": f"Cabinet repair, claim {project_id}",
            "policy_number": f"POL-{project_id}-{assignment_id % 97:02d}",
            "loss_type": task["custom_fields"]["damage_type"],
            "address": {
                "street": f"{assignment_id % 9000 + 100} Main Street",
                "city": "Springfield",
                "state": "IL",
                "postal_code": "62701",
                "country": "US",
            },
        },
    }
    event.update(overrides)
    return event


def _padded_event(assignment_id: int, sequence: int) -> bytes:
    """A tracking event padded with realistic free text to about 1.6 KB."""
    event = tracking_event(assignment_id, sequence)
    notes = " ".join(world.technician_notes_for(assignment_id + i) for i in range(19))
    event["task"]["technician_notes"] = notes
    return orjson.dumps(event)


def _records(count: int, bad_every: int) -> list[tuple]:
    records = []
    for i in range(count):
        value = _padded_event(world.FIRST_ASSIGNMENT_ID + i, i)
        if bad_every and i % bad_every == bad_every - 1:
            value = value[: len(value) // 2]  # truncated JSON
        records.append((TOPIC, i % 6, i, _BASE_TIMESTAMP_MS + i, None, value))
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=100_000)
    parser.add_argument("--bad-every", type=int, default=0, help="every Nth record truncated")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    records = _records(args.events, args.bad_every)
    size = sum(len(record[5]) for record in records) / len(records)
    batches = [
        raw_batch_from_records(records[start : start + args.batch_size])
        for start in range(0, len(records), args.batch_size)
    ]
    print(f"{args.events} events of {size:.0f} bytes on average, batches of {args.batch_size}")
    # The floor of any per-record design, to read the figures on a noisy machine.
    values = [record[5] for record in records]
    started = time.perf_counter()
    for value in values:
        try:
            orjson.loads(value)
        except orjson.JSONDecodeError:
            pass
    loads_rate = args.events / (time.perf_counter() - started)
    print(f"orjson.loads alone: {loads_rate:,.0f} events/s")

    best = {"transform": float("inf"), "validate": float("inf"), "total": float("inf")}
    for _ in range(args.repeat):
        spent = {"transform": 0.0, "validate": 0.0}
        valid = errors = 0
        for raw in batches:
            started = time.perf_counter()
            events = transform(raw, worker="bench")
            transformed = time.perf_counter()
            result = validate(events, expected_task_id=world.ITEL_TASK_ID)
            spent["transform"] += transformed - started
            spent["validate"] += time.perf_counter() - transformed
            valid += result.valid.height
            errors += result.errors.height
        spent["total"] = spent["transform"] + spent["validate"]
        best = {stage: min(best[stage], seconds) for stage, seconds in spent.items()}
    for stage, seconds in best.items():
        print(f"{stage:>9}: {args.events / seconds:>9,.0f} events/s ({seconds:.3f} s)")
    share = args.events / best["total"] / loads_rate
    print(f"transform + validate run at {share:.0%} of orjson.loads alone")
    print(f"valid {valid}, errors {errors}")


if __name__ == "__main__":
    main()
