"""End-to-end latency at a steady rate: from each event's Kafka record timestamp to its tracking
row's ingested_at (Delta) and to the iTel simulator's receipt of it (received_at).

Only events of the steady phase count; an event missing at either end is a correctness failure
reported by correctness.py, never a figure here.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from itel_dagster_bench.ground_truth import InputRecord


def percentiles(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"p50_seconds": None, "p95_seconds": None, "max_seconds": None, "events": 0}
    values = sorted(seconds)

    def at(q: float) -> float:
        # Nearest rank: the smallest value with at least q of the values at or below it.
        return values[max(0, min(len(values) - 1, int(-(-q * len(values) // 1)) - 1))]

    return {"p50_seconds": round(at(0.50), 3), "p95_seconds": round(at(0.95), 3),
            "max_seconds": round(values[-1], 3), "events": len(values)}


def tracking_latencies(records: list[InputRecord], tracking: pl.DataFrame) -> list[float]:
    """Seconds from Kafka timestamp to ingested_at, for the valid `records` found in `tracking`."""
    sent = {r.event_id: r.timestamp_ms for r in records if r.valid}
    rows = tracking.filter(pl.col("event_id").is_in(list(sent))).select("event_id", "ingested_at")
    return [
        ingested.timestamp() - sent[event_id] / 1000
        for event_id, ingested in rows.iter_rows()
    ]


def itel_latencies(records: list[InputRecord], itel_requests: list[dict]) -> list[float]:
    """Seconds from Kafka timestamp to the iTel simulator's received_at (first acceptance)."""
    sent = {r.event_id: r.timestamp_ms for r in records if r.valid}
    return [
        datetime.fromisoformat(request["received_at"]).timestamp()
        - sent[request["idempotency_key"]] / 1000
        for request in itel_requests
        if request.get("idempotency_key") in sent
    ]
