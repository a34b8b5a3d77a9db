"""The daily partitions shared by the Delta table and the send ledger: UTC days of the Kafka
record timestamps. end_offset=1 so today's partition exists while today's events arrive."""

from __future__ import annotations

import dagster as dg

PARTITIONS_START_DATE = "2026-01-01"

daily_partitions = dg.DailyPartitionsDefinition(
    start_date=PARTITIONS_START_DATE, timezone="UTC", end_offset=1
)
