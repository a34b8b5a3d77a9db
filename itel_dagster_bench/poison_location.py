"""The bench's code location with a bug one record hits: the project's definitions, with the
tracking worker's row building and the API worker's payload building made to raise on the event
named by ITEL_BENCH_POISON_EVENT_ID. Only `python -m itel_dagster_bench.poison_recovery` loads it;
it shows how the sensor's poison isolation gets a worker past a record no run can handle.
"""

from __future__ import annotations

import os

from itel_dagster.definitions import defs
from itel_dagster.ops import api_ops, tracking_ops

POISON_ENV = "ITEL_BENCH_POISON_EVENT_ID"


def _breaks_on_poison(stage):
    poison = os.environ.get(POISON_ENV)

    def broken(rows, *args, **kwargs):
        if poison and poison in rows["event_id"].to_list():
            raise ValueError(f"bench poison: cannot handle event {poison}")
        return stage(rows, *args, **kwargs)

    return broken


tracking_ops.tracking_rows = _breaks_on_poison(tracking_ops.tracking_rows)
api_ops.with_payloads = _breaks_on_poison(api_ops.with_payloads)

__all__ = ["defs"]
