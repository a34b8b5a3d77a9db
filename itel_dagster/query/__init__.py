"""`itel-dagster query`: read-only SQL and named queries over the Delta tables (polars, lazy)."""
