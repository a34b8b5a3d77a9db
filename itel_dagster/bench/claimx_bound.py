"""The fewest ClaimX requests a 60 s cache shared by both workers allows: for each assignment, the
moments its events were looked up (the start of each worker's run that handled them), covered
greedily by 60 s windows (greedy covering is optimal); the window count over events is the bound.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

from itel_dagster.bench.dagster_path import RunFacts
from itel_dagster.bench.ground_truth import InputRecord


def lookup_moments(records: list[InputRecord], runs: list[RunFacts]) -> dict[int, list[float]]:
    """assignment_id -> start times of the runs that handled its valid events (all workers)."""
    by_lane: dict[tuple[str, int], list[RunFacts]] = defaultdict(list)
    for run in runs:
        if run.status == "SUCCESS" and run.started_at is not None:
            by_lane[(run.worker, run.partition)].append(run)
    for lane in by_lane.values():
        lane.sort(key=lambda r: (r.start, r.started_at))
    starts = {lane: [r.start for r in found] for lane, found in by_lane.items()}
    moments: dict[int, list[float]] = defaultdict(list)
    for (worker, partition), lane in by_lane.items():
        for record in records:
            if record.partition != partition or not record.valid or record.assignment_id is None:
                continue
            at = bisect.bisect_right(starts[(worker, partition)], record.offset) - 1
            if at >= 0 and lane[at].start <= record.offset < lane[at].end:
                moments[record.assignment_id].append(lane[at].started_at)
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
