"""Did the pipeline handle every published record exactly once? Compared with the ground truth:
tracking rows == valid events, each once; every valid event accepted once by iTel and in the send
ledger; error topics hold one record per bad record; both groups committed everything.

A failed check makes the bench fail: a benchmark that loses records reports failure, not figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
from deltalake import DeltaTable

from itel_dagster_bench.ground_truth import InputRecord, record_count
from itel_dagster.kafka.offsets import group_progress
from itel_dagster.settings.workers import WorkerSettings


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def read_table(uri: Path, columns: list[str]) -> pl.DataFrame:
    if not DeltaTable.is_deltatable(str(uri)):
        return pl.DataFrame(schema={c: pl.String for c in columns})
    return pl.read_delta(str(uri), columns=columns)


def _same_set(name: str, expected: set, found: list) -> Check:
    distinct = set(found)
    lost = len(expected - distinct)
    extra = len(distinct - expected)
    duplicates = len(found) - len(distinct)
    passed = not (lost or extra or duplicates)
    return Check(name, passed, f"{len(found)} found for {len(expected)} expected: lost {lost}, "
                               f"unexpected {extra}, duplicates {duplicates}")


def check_all(records: list[InputRecord], bootstrap: str, delta_root: Path,
              tracking: WorkerSettings, api: WorkerSettings,
              itel_requests: list[dict]) -> list[Check]:
    valid = {r.event_id for r in records if r.valid}
    bad = sum(1 for r in records if not r.valid)
    rows = read_table(delta_root / (tracking.delta_table or "itel_cabinet_task_tracking"),
                      ["event_id"])
    ledger = read_table(delta_root / "itel_api_sends", ["event_id", "outcome"])
    accepted = ledger.filter(pl.col("outcome") == "accepted")["event_id"].to_list()
    checks = [
        _same_set("tracking rows = valid events, once each", valid, rows["event_id"].to_list()),
        _same_set("iTel accepted each valid event once",
                  valid, [r.get("idempotency_key") for r in itel_requests]),
        _same_set("send ledger: one accepted row per valid event", valid, accepted),
    ]
    for worker in (tracking, api):
        errors = record_count(bootstrap, worker.error_topic)
        checks.append(Check(f"{worker.name}: error records = bad records", errors == bad,
                            f"{errors} on {worker.error_topic} for {bad} bad records"))
        lag = sum(p.lag for p in group_progress(bootstrap, worker.consumer_group,
                                                worker.input_topic))
        checks.append(Check(f"{worker.name}: lag 0", lag == 0, f"lag {lag}"))
    return checks
