"""The kinds of bad record the publisher mixes into the stream: one function per kind, in BAD_KINDS.

Each turns a valid event into the value of a record the pipeline must reject as that kind (the
error_type of the same name in stages/validate.py). None mutates the event it is given.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import orjson

# Size of the huge technician_notes of an `oversized` record. The pipeline rejects a record value
# over stages.validate.DEFAULT_MAX_RECORD_BYTES (256 KiB); the broker refuses one over its default
# message.max.bytes (1 MiB), so 300 KB is bad for the pipeline yet still publishable.
OVERSIZED_FIELD_BYTES = 300_000

# The fields a valid event must have; `missing_field` drops one of them.
REQUIRED_FIELDS = ("event_id", "task_id", "assignment_id", "project_id", "task_status", "event_type")

# Another ClaimX task on the same trigger, a neighbour id, an unrelated task.
_OTHER_TASK_IDS = (32514, 32512, 41007)
# Accented notes from a producer that encodes Latin-1: é and ç are single bytes that UTF-8 rejects.
_LATIN1_NOTES = " Réparé; façade à remplacer."


@dataclass(frozen=True)
class BadValue:
    value: bytes
    event_id: str | None  # None when the corruption removed it


def malformed_json(event: dict, rng: random.Random) -> BadValue:
    """Cut short mid-document, or written as a Python dict (single quotes, None) instead of JSON."""
    if rng.random() < 0.5:
        text = orjson.dumps(event)
        # A proper prefix of a JSON object never parses: its closing brace is the last byte.
        return BadValue(text[: rng.randrange(len(text) // 3, len(text) - 1)], event["event_id"])
    return BadValue(repr(event).encode(), event["event_id"])


def missing_field(event: dict, rng: random.Random) -> BadValue:
    """One required field left out."""
    dropped = rng.choice(REQUIRED_FIELDS)
    kept = {name: value for name, value in event.items() if name != dropped}
    return BadValue(orjson.dumps(kept), kept.get("event_id"))


def wrong_task_id(event: dict, rng: random.Random) -> BadValue:
    """An event of another ClaimX task (task_id an int, but not the iTel task's)."""
    other = rng.choice(_OTHER_TASK_IDS)
    wrong = {**event, "task_id": other, "task": {**event["task"], "task_id": other}}
    return BadValue(orjson.dumps(wrong), event["event_id"])


def wrong_type(event: dict, rng: random.Random) -> BadValue:
    """task_id or assignment_id as a non-numeric string."""
    field, value = rng.choice(
        (
            ("task_id", "abc"),
            ("task_id", f"task-{event['task_id']}"),
            ("assignment_id", f"A-{event['assignment_id']}"),
            ("assignment_id", "n/a"),
        )
    )
    return BadValue(orjson.dumps({**event, field: value}), event["event_id"])


def non_utf8(event: dict, rng: random.Random) -> BadValue:
    """The whole JSON text in Latin-1, with accented technician notes: not valid UTF-8."""
    notes = event["task"]["technician_notes"] + _LATIN1_NOTES
    accented = {**event, "task": {**event["task"], "technician_notes": notes}}
    return BadValue(orjson.dumps(accented).decode().encode("latin-1"), event["event_id"])


def oversized(event: dict, rng: random.Random) -> BadValue:
    """A well-formed event whose technician_notes alone are OVERSIZED_FIELD_BYTES long."""
    notes = event["task"]["technician_notes"] + " "
    huge = (notes * (OVERSIZED_FIELD_BYTES // len(notes) + 1))[:OVERSIZED_FIELD_BYTES]
    padded = {**event, "task": {**event["task"], "technician_notes": huge}}
    return BadValue(orjson.dumps(padded), event["event_id"])


BAD_KINDS: dict[str, Callable[[dict, random.Random], BadValue]] = {
    "malformed_json": malformed_json,
    "missing_field": missing_field,
    "wrong_task_id": wrong_task_id,
    "wrong_type": wrong_type,
    "non_utf8": non_utf8,
    "oversized": oversized,
}
