"""The metrics the pipeline exposes: name, type, help text and labels, in one place.

The names are the seed's and part of the contract with dashboards and alerts: never rename one.
Counter names carry `_total`, as Prometheus exposes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from itel_dagster.settings.env_yaml import ConfigError
from itel_dagster.settings.workers import DELTA_WRITE, ITEL_API_SEND, KAFKA_PUBLISH, load_workers


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # counter | histogram
    help: str
    labels: tuple[str, ...] = ()
    # Label values exposed as 0 before anything is recorded, so rate() and alerts see the series.
    initial: tuple[tuple[str, ...], ...] = ((),)
    buckets: tuple[float, ...] = ()  # histogram upper bounds, +Inf implied


STATUS_CLASSES = ("2xx", "4xx", "5xx", "transport_error")  # 3xx (not followed) only when seen
# Seconds; iTel answers in tens of milliseconds when well, the timeout is 30 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

TRACKING_MESSAGES = MetricSpec(
    "itel_tracking_worker_messages_processed_total", "counter",
    "Kafka records the tracking worker finished, by outcome (succeeded: a row in Delta or "
    "already there; failed: sent to the error topic).",
    ("outcome",), (("succeeded",), ("failed",)))
TRACKING_DELTA_WRITES = MetricSpec(
    "itel_tracking_worker_delta_writes_total", "counter",
    "Rows the tracking worker inserted into its Delta table (rows already present not counted).")
TRACKING_DELTA_WRITE_ERRORS = MetricSpec(
    "itel_tracking_worker_delta_write_errors_total", "counter",
    "Batches whose Delta write failed after all op retries (their records went to the error "
    "topic).")

API_MESSAGES = MetricSpec(
    "itel_api_worker_messages_processed_total", "counter",
    "Kafka records the API worker finished, by outcome (succeeded: accepted by iTel; failed: "
    "invalid, rejected or dead-lettered; skipped: already in the send ledger).",
    ("outcome",), (("succeeded",), ("failed",), ("skipped",)))
API_CALLS = MetricSpec(
    "itel_api_worker_api_calls_total", "counter",
    "HTTP requests to the iTel API, retries included (a batch request counts once), by status "
    "class of the answer.",
    ("status_class",), tuple((c,) for c in STATUS_CLASSES))
API_ERRORS = MetricSpec(
    "itel_api_worker_api_errors_total", "counter",
    "HTTP requests to the iTel API that failed: no answer (transport_error) or a non-2xx status.",
    ("status_class",), tuple((c,) for c in STATUS_CLASSES if c != "2xx"))
API_LATENCY = MetricSpec(
    "itel_api_worker_api_latency_seconds", "histogram",
    "Seconds from sending one HTTP request to the iTel API to its answer or its failure.",
    buckets=LATENCY_BUCKETS)

TRIGGER_MESSAGES = MetricSpec(
    "itel_trigger_messages_processed_total", "counter",
    "Upstream ClaimX task events the plugin trigger finished, by outcome (succeeded: published "
    "as the seed's event; failed: unreadable, sent to the error topic; skipped: forwarded "
    "before; not_selected: another task or lifecycle change).",
    ("outcome",), (("succeeded",), ("failed",), ("skipped",), ("not_selected",)))

RECORDS_LOST_TO_RETENTION = MetricSpec(
    "itel_records_lost_to_retention_total", "counter",
    "Kafka records retention deleted before the worker's consumer group handled them (the group's "
    "offsets were then committed past them), by worker.",
    ("worker",), ())

COMMITS_REFUSED = MetricSpec(
    "itel_commits_refused_total", "counter",
    "Runs that published and committed nothing because the worker's consumer group no longer "
    "stood at the start of their range (another run, a zombie's successor, moved it), by worker.",
    ("worker",), ())

PIPELINE_METRICS = (TRACKING_MESSAGES, TRACKING_DELTA_WRITES, TRACKING_DELTA_WRITE_ERRORS,
                    API_MESSAGES, API_CALLS, API_ERRORS, API_LATENCY, RECORDS_LOST_TO_RETENTION,
                    COMMITS_REFUSED, TRIGGER_MESSAGES)
# The seed's per-worker series, by the worker's final stage.
MESSAGES_PROCESSED = {DELTA_WRITE: TRACKING_MESSAGES, ITEL_API_SEND: API_MESSAGES,
                      KAFKA_PUBLISH: TRIGGER_MESSAGES}


def initial_series(spec: MetricSpec) -> tuple[tuple[str, ...], ...]:
    """The label values exposed as 0 before anything is recorded: for a metric labelled by
    worker, each worker of workers.yaml."""
    if spec.labels != ("worker",):
        return spec.initial
    try:
        return tuple((name,) for name in load_workers())
    except ConfigError:
        return ()
