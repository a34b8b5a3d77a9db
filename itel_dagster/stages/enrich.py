"""Enrichment: joins the ClaimX lookup results onto validated events (pure; no HTTP here).

Every row leaves with an enrichment_status: enriched, not_found or skipped (ClaimX unavailable).
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

LOOKUP_SCHEMA = {
    "assignment_id": pl.Int64,
    "claimx_task_full": pl.String,
    "enrichment_status": pl.String,
}


def lookup_frame(lookups: Mapping[int, tuple[str, str | None]]) -> pl.DataFrame:
    """assignment_id -> (status, task JSON) as a frame to join."""
    return pl.DataFrame(
        {
            "assignment_id": list(lookups),
            "claimx_task_full": [body for _, body in lookups.values()],
            "enrichment_status": [status for status, _ in lookups.values()],
        },
        schema=LOOKUP_SCHEMA,
    )


def apply_lookups(valid: pl.DataFrame, lookups: Mapping[int, tuple[str, str | None]]) -> pl.DataFrame:
    enriched = valid.join(lookup_frame(lookups), on="assignment_id", how="left")
    return enriched.with_columns(pl.col("enrichment_status").fill_null("skipped"))
