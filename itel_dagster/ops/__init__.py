"""Ops: thin wiring of the pure stages (itel_dagster.stages) to the resources."""
