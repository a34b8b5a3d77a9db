"""Increments gathered in memory and written to the metrics store in one transaction.

A metrics write must never break the pipeline: `flush` logs a failure and drops the increments,
it never raises.
"""

from __future__ import annotations

import bisect
import logging
from collections import defaultdict

from itel_dagster.metrics.names import MetricSpec
from itel_dagster.metrics.store import MetricsStore, SampleKey, sample_key
from itel_dagster.state import open_metrics_store

logger = logging.getLogger(__name__)

INF = "+Inf"


def bucket_label(spec: MetricSpec, seconds: float) -> str:
    """The `le` of the one bucket a value falls in (buckets are stored non-cumulative)."""
    index = bisect.bisect_left(spec.buckets, seconds)
    return INF if index == len(spec.buckets) else repr(spec.buckets[index])


class MetricBatch:
    def __init__(self, store: MetricsStore | None = None):
        self._store = store
        self.increments: dict[SampleKey, float] = defaultdict(float)

    def inc(self, spec: MetricSpec, amount: float = 1, **labels: str) -> None:
        assert spec.kind == "counter" and set(labels) == set(spec.labels), spec.name
        self.increments[sample_key(spec.name, **labels)] += amount

    def observe(self, spec: MetricSpec, value: float) -> None:
        assert spec.kind == "histogram", spec.name
        self.increments[sample_key(f"{spec.name}_bucket", le=bucket_label(spec, value))] += 1
        self.increments[sample_key(f"{spec.name}_sum")] += value

    def flush(self, log: logging.Logger | None = None) -> bool:
        """Write and forget the increments; False (and a warning) when the store failed."""
        increments, self.increments = dict(self.increments), defaultdict(float)
        store = None
        try:
            store = self._store or open_metrics_store()
            store.add(increments)
            return True
        except Exception as exc:  # metrics are never worth a failed run
            where = store.path if store is not None else "the metrics store"
            (log or logger).warning("metrics not recorded (%d values lost), %s: %s: %s",
                                    len(increments), where, type(exc).__name__, exc)
            return False
