"""Pure stages shared by both iTel workers: raw batch → transform → validate → error records.

Polars DataFrame in, polars DataFrame out. No Dagster, Kafka or HTTP here: a bad record becomes a
row with a reason, never an exception that fails the batch.
"""
