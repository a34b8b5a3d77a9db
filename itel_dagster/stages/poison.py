"""Dead letters of records that no run can get through (pure).

A record the sensor's isolation found failing every run on its own, or one an operator skips,
becomes an error record of stage `poison` with the reason and its Kafka coordinates; the original
payload is kept, so a dead-letter replay can send it through again once the cause is fixed.
Never raises on the records' content.
"""

from __future__ import annotations

from datetime import datetime, timezone

import polars as pl

from itel_dagster.stages.error_records import stage_failures
from itel_dagster.stages.transform import transform

POISON_STAGE = "poison"
ISOLATED = "poison_isolated"  # found by the sensor's isolation
SKIPPED_BY_OPERATOR = "skipped_by_operator"


def poison_records(raw: pl.DataFrame, worker: str, reason: str,
                   error_type: str = ISOLATED) -> pl.DataFrame:
    """Error records (stage poison) of a raw batch (see raw_batch.RAW_BATCH_SCHEMA)."""
    now = datetime.now(timezone.utc)
    # transform gives the payload as text (base64 when not UTF-8) and the event_id when readable.
    events = transform(raw, worker=worker, ingested_at=now)
    return stage_failures(events, worker=worker, stage=POISON_STAGE, error_type=error_type,
                          reason=reason, failed_at=now)
