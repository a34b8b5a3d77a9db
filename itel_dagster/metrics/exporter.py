"""The `/metrics` endpoint: the counters every run process added to the metrics store, plus consumer
lag read from Kafka, rendered by prometheus_client at each scrape.

It only reads (the store, Kafka offsets); an unreadable store or an unreachable Kafka leaves
those series out for that scrape instead of failing it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from itel_dagster.metrics.consumer_lag import lag_families
from itel_dagster.metrics.names import PIPELINE_METRICS, MetricSpec, initial_series
from itel_dagster.metrics.recording import INF
from itel_dagster.metrics.store import MetricsStore, SampleKey, sample_key
from itel_dagster.state import open_metrics_store

logger = logging.getLogger(__name__)

DEFAULT_PORT = 9464


def _counter(spec: MetricSpec, values: dict[SampleKey, float]) -> CounterMetricFamily:
    family = CounterMetricFamily(spec.name, spec.help, labels=list(spec.labels))
    series = {tuple(v for _, v in labels): value
              for (name, labels), value in values.items() if name == spec.name}
    for initial in initial_series(spec):
        series.setdefault(initial, 0.0)
    for label_values, value in sorted(series.items()):
        family.add_metric(list(label_values), value)
    return family


def _histogram(spec: MetricSpec, values: dict[SampleKey, float]) -> HistogramMetricFamily:
    cumulative, buckets = 0.0, []
    for bound in [*map(repr, spec.buckets), INF]:
        cumulative += values.get(sample_key(f"{spec.name}_bucket", le=bound), 0.0)
        buckets.append((bound, cumulative))
    family = HistogramMetricFamily(spec.name, spec.help)
    family.add_metric([], buckets, sum_value=values.get(sample_key(f"{spec.name}_sum"), 0.0))
    return family


class PipelineCollector(Collector):
    """A prometheus_client collector over the metrics store and the consumer groups' offsets.
    `bootstrap_servers` is called at each scrape (None: no lag series)."""

    def __init__(self, store: MetricsStore, bootstrap_servers: Callable[[], str] | None):
        self.store = store
        self.bootstrap_servers = bootstrap_servers

    def collect(self) -> Iterator[Metric]:
        try:
            values = self.store.values()
        except Exception as exc:
            logger.warning("metrics store %s not read: %s: %s", self.store.path,
                           type(exc).__name__, exc)
            values = None
        if values is not None:
            for spec in PIPELINE_METRICS:
                yield _counter(spec, values) if spec.kind == "counter" else _histogram(spec, values)
        if self.bootstrap_servers is not None:
            try:
                servers = self.bootstrap_servers()
            except Exception as exc:
                logger.warning("no Kafka to read lag from: %s", exc)
                return
            yield from lag_families(servers)


def pipeline_registry(store: MetricsStore | None = None,
                      bootstrap_servers: Callable[[], str] | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(store or open_metrics_store(), bootstrap_servers))
    return registry


def render(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def serve(registry: CollectorRegistry, host: str, port: int) -> WSGIServer:
    """Serve the registry on http://host:port/metrics in a daemon thread (port 0: any free one).
    Stop it with `server.shutdown(); server.server_close()`."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
