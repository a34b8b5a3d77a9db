"""The Kafka ranges of a worker's run, written to and read back from its run tags.

Tags are the one record of what a run covered: the sensor reads them to know which partitions are
in flight and how each partition's last run ended, the bench to attribute records to runs, the
alerts to name the ranges. `itel/ranges` is for programs (JSON); `itel/kafka_range` for people.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from itel_dagster.sensors.dispatch_plan import PlannedRun

WORKER_TAG = "itel/worker"
RANGES_TAG = "itel/ranges"
KAFKA_PARTITIONS_TAG = "itel/kafka_partitions"
KAFKA_RANGE_TAG = "itel/kafka_range"
ATTEMPT_TAG = "itel/attempt"
# Poison isolation, for people: "probe 0:100-150 (bad record before 200)", "dead-letter 0:123".
ISOLATION_TAG = "itel/isolation"
DEAD_LETTER_TAG = "itel/dead_letter"  # "true" on a dead-letter run: counted per hour
FAILURES_BEFORE_TAG = "itel/failures_before"
# One run at a time per lane (dagster.yaml's tag_concurrency_limits): <worker>:<lane>.
LANE_TAG = "itel/lane"
# Written by runs dispatched before runs covered several partitions; still read.
LEGACY_PARTITION_TAG = "itel/kafka_partition"
LEGACY_START_TAG = "itel/range_start"
LEGACY_END_TAG = "itel/range_end"


@dataclass(frozen=True)
class TaggedRange:
    partition: int
    start: int
    end: int
    attempt: int = 1
    failures_before: int = 0
    suspect_end: int | None = None
    dead_letter: bool = False
    failed_run_id: str | None = None
    crashes_before: int = 0

    @property
    def size(self) -> int:
        return self.end - self.start


def range_tags(worker: str, planned: PlannedRun) -> dict[str, str]:
    ranges = [r.range for r in planned.ranges]
    isolation = {}
    for p in planned.ranges:
        r = p.range
        if p.dead_letter:
            isolation[ISOLATION_TAG] = f"dead-letter {r.partition}:{r.start}"
            isolation[DEAD_LETTER_TAG] = "true"
        elif p.suspect_end is not None:
            isolation[ISOLATION_TAG] = (f"probe {r.partition}:{r.start}-{r.end} (bad record "
                                        f"before {p.suspect_end})")
    return {
        **isolation,
        WORKER_TAG: worker,
        LANE_TAG: f"{worker}:{planned.lane}",
        KAFKA_PARTITIONS_TAG: ",".join(str(r.partition) for r in ranges),
        KAFKA_RANGE_TAG: ", ".join(f"{r.topic}[{r.partition}] {r.start}-{r.end}" for r in ranges),
        RANGES_TAG: json.dumps([
            {"partition": p.range.partition, "start": p.range.start, "end": p.range.end,
             "attempt": p.attempt, "failures_before": p.failures_before,
             **_isolation_fields(p)}
            for p in planned.ranges
        ], separators=(",", ":")),
        ATTEMPT_TAG: str(planned.attempt),
        FAILURES_BEFORE_TAG: str(planned.failures_before),
    }


def _isolation_fields(planned) -> dict:
    fields = {}
    if planned.suspect_end is not None:
        fields["suspect_end"] = planned.suspect_end
    if planned.dead_letter:
        fields["dead_letter"] = True
    if planned.failed_run_id:
        fields["failed_run_id"] = planned.failed_run_id
    if planned.crashes_before:
        fields["crashes_before"] = planned.crashes_before
    return fields


def tagged_ranges(tags: Mapping[str, str]) -> list[TaggedRange]:
    """The ranges a run covered; [] for a run without ranges (a backfill, a replay)."""
    if RANGES_TAG in tags:
        return [TaggedRange(int(r["partition"]), int(r["start"]), int(r["end"]),
                            int(r.get("attempt", 1)), int(r.get("failures_before", 0)),
                            r.get("suspect_end"), bool(r.get("dead_letter", False)),
                            r.get("failed_run_id"), int(r.get("crashes_before", 0)))
                for r in json.loads(tags[RANGES_TAG])]
    if LEGACY_START_TAG in tags and LEGACY_PARTITION_TAG in tags:
        return [TaggedRange(int(tags[LEGACY_PARTITION_TAG]), int(tags[LEGACY_START_TAG]),
                            int(tags[LEGACY_END_TAG]), int(tags.get(ATTEMPT_TAG, "1")),
                            int(tags.get(FAILURES_BEFORE_TAG, "0")))]
    return []


def tagged_partitions(tags: Mapping[str, str]) -> set[int]:
    if KAFKA_PARTITIONS_TAG in tags:
        return {int(p) for p in tags[KAFKA_PARTITIONS_TAG].split(",") if p}
    return {r.partition for r in tagged_ranges(tags)}
