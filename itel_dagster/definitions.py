"""The Dagster code location of itel-dagster (workspace.yaml loads `defs` from here).

Loading it must never need a running service: Kafka, ClaimX, iTel and Delta are reached only
when a sensor ticks or a run executes.
"""

from __future__ import annotations

import dagster as dg

from itel_dagster.settings.workers import load_workers

# A broken workers.yaml fails the code location at load, with the file and key in the message.
WORKERS = load_workers()

defs = dg.Definitions()
