"""Duplicate deliveries within one batch (pure)."""

from __future__ import annotations

import polars as pl

from itel_dagster.stages.duplicate_deliveries import first_copies


def test_the_copy_of_the_lowest_offset_stays_and_the_order_is_kept():
    events = pl.DataFrame({
        "event_id": ["b", "a", "b", "c", "a"],
        "kafka_partition": [1, 0, 0, 2, 0],
        "kafka_offset": [7, 5, 9, 1, 3],
    })
    assert first_copies(events).rows() == [("b", 0, 9), ("c", 2, 1), ("a", 0, 3)]
    assert first_copies(events.clear()).is_empty()
