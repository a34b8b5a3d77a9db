"""The fewest ClaimX requests a 60 s cache shared by both workers allows: for each assignment, the
moments its events were looked up (the start of each worker's run that handled them), covered
greedily by 60 s windows (greedy covering is optimal); the window count over events is the bound.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

from itel_dagster_bench.dagster_path import RunFacts
from itel_dagster_bench.ground_truth import InputRecord


def lookup_moments(records: list[InputRecord], runs: list[RunFacts]) -> dict[int, list[float]]:
    """assignment_id -> start times of the runs that handled its valid events (all workers)."""
    # (worker, partition) -> that partition's ranges, in offset order, with their run's start.
    by_partition: dict[tuple[str, int], list[tuple[int, int, float]]] = defaultdict(list)
    for run in runs:
        if run.status == "SUCCESS" and run.started_at is not None:
            for r in run.ranges:
                by_partition[(run.worker, r.partition)].append((r.start, r.end, run.started_at))
    for spans in by_partition.values():
        spans.sort()
    moments: dict[int, list[float]] = defaultdict(list)
    for (worker, partition), spans in by_partition.items():
        starts = [start for start, _end, _at in spans]
        for record in records:
            if record.partition != partition or not record.valid or record.assignment_id is None:
                continue
            at = bisect.bisect_right(starts, record.offset) - 1
            if at >= 0 and spans[at][0] <= record.offset < spans[at][1]:
                moments[record.assignment_id].append(spans[at][2])
    return moments


def windows_needed(moments: list[float], ttl_seconds: float) -> int:
    count, covered_until = 0, float("-inf")
    for moment in sorted(moments):
        if moment >= covered_until:
            count += 1
            covered_until = moment + ttl_seconds
    return count


def requests_bound(records: list[InputRecord], runs: list[RunFacts],
                   ttl_seconds: float = 60.0) -> int:
    return sum(windows_needed(m, ttl_seconds) for m in lookup_moments(records, runs).values())
