"""A worker whose stages leave out claimx_lookup: its events carry no ClaimX task details (pure).

Each row gets enrichment_status `not_requested` and an empty claimx_task_full, so the final stage
sees the same columns as after a lookup; ClaimX is never asked.
"""

from __future__ import annotations

import polars as pl

from itel_dagster.stages.enrich import LOOKUP_SCHEMA

NOT_REQUESTED = "not_requested"


def not_enriched(valid: pl.DataFrame) -> pl.DataFrame:
    return valid.with_columns(
        pl.lit(None, dtype=LOOKUP_SCHEMA["claimx_task_full"]).alias("claimx_task_full"),
        pl.lit(NOT_REQUESTED, dtype=LOOKUP_SCHEMA["enrichment_status"]).alias("enrichment_status"),
    )
