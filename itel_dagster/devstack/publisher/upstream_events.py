"""Upstream ClaimX task events for the plugin trigger: the publisher's events as ClaimX emits them
(no trigger_name: the trigger adds it), a chosen share of them of other tasks.

No Kafka here, and seeded like events.py. Bad records pass through unchanged.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

import orjson

from itel_dagster.devstack.publisher.events import PublishedRecord

# Other ClaimX tasks whose events share the upstream topic (the trigger skips them).
OTHER_TASKS = ((32514, "Water Mitigation Estimate"), (41007, "Contents Inventory"),
               (27788, "Roof Inspection"))


def upstream_records(records: Iterable[PublishedRecord], other_task_fraction: float = 0.3,
                     seed: int | str = 0) -> Iterator[PublishedRecord]:
    """`records` (events.generate_records / live_records) as upstream ClaimX task events; each
    valid event is of another task with probability `other_task_fraction`."""
    if not 0.0 <= other_task_fraction <= 1.0:
        raise ValueError(f"other_task_fraction must be between 0 and 1, got {other_task_fraction}")
    rng = random.Random(f"upstream:{seed}")
    for record in records:
        if record.bad_kind is not None:
            yield record
            continue
        event = orjson.loads(record.value)
        del event["trigger_name"]
        if rng.random() < other_task_fraction:
            task_id, task_name = rng.choice(OTHER_TASKS)
            event.update(task_id=task_id, task_name=task_name)
            event["task"]["task_id"] = task_id
        yield record._replace(value=orjson.dumps(event))
