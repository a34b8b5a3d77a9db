"""What the workers record: a run's finished records (from its last op) and each HTTP request
to iTel (from the sender). Only counts and latencies, never payloads or secrets.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from itel_dagster.metrics.names import (
    API_CALLS, API_ERRORS, API_LATENCY, COMMITS_REFUSED, MESSAGES_PROCESSED,
    RECORDS_LOST_TO_RETENTION, TRACKING_DELTA_WRITE_ERRORS, TRACKING_DELTA_WRITES, MetricSpec,
)
from itel_dagster.metrics.recording import MetricBatch
from itel_dagster.metrics.store import MetricsStore
from itel_dagster.settings.workers import DELTA_WRITE, WorkerSettings

if TYPE_CHECKING:
    from itel_dagster.ops.stage_batch import StageBatch

logger = logging.getLogger(__name__)


def record_batch_metrics(settings: WorkerSettings, batch: StageBatch,
                         log: logging.Logger | None = None) -> None:
    """A live run's outcome, once its offsets are committed. Events the open breaker held back
    (not_sent) are not counted: they stay in Kafka and a later run finishes them."""
    processed = MESSAGES_PROCESSED.get(settings.final_stage)
    if processed is None:
        return  # a final stage the seed names no metrics for
    metrics = MetricBatch()
    try:
        metrics.inc(processed, batch.rows.height, outcome="succeeded")
        metrics.inc(processed, batch.error_count(), outcome="failed")
        metrics.inc(processed, batch.already_handled, outcome="skipped")
        if batch.counts.get("skipped"):  # left out by a stage on purpose (other tasks' events)
            metrics.inc(processed, int(batch.counts["skipped"]), outcome="not_selected")
        if settings.final_stage == DELTA_WRITE:
            metrics.inc(TRACKING_DELTA_WRITES, int(batch.counts.get("delta_inserted", 0)))
            metrics.inc(TRACKING_DELTA_WRITE_ERRORS,
                        int(batch.counts.get("failed_stage_delta_write", 0)))
    except Exception as exc:  # the run's outcome is committed; metrics never change that
        (log or logger).warning("metrics not recorded: %s: %s", type(exc).__name__, exc)
        return
    metrics.flush(log)


def record_retention_loss(settings: WorkerSettings, records: int,
                          log: logging.Logger | None = None) -> None:
    """Records retention deleted before the worker handled them, once its commit moved past."""
    _count_for_worker(RECORDS_LOST_TO_RETENTION, settings, records, log)


def record_commit_refused(settings: WorkerSettings, log: logging.Logger | None = None) -> None:
    """A run that found its group moved by another run, and so committed nothing."""
    _count_for_worker(COMMITS_REFUSED, settings, 1, log)


def _count_for_worker(spec: MetricSpec, settings: WorkerSettings, amount: float,
                      log: logging.Logger | None) -> None:
    metrics = MetricBatch()
    metrics.inc(spec, amount, worker=settings.name)
    metrics.flush(log)


def status_class(status_code: int | None) -> str:
    return "transport_error" if status_code is None else f"{status_code // 100}xx"


class ApiCallMetrics:
    """The HTTP requests of one send() call, kept in memory and flushed once at its end."""

    def __init__(self, store: MetricsStore | None = None):
        self._batch = MetricBatch(store)
        self._lock = threading.Lock()  # the sender's threads report here

    def request_done(self, status_code: int | None, seconds: float) -> None:
        """One request: its status (None: no answer) and its latency."""
        cls = status_class(status_code)
        with self._lock:
            self._batch.inc(API_CALLS, status_class=cls)
            if cls != "2xx":
                self._batch.inc(API_ERRORS, status_class=cls)
            self._batch.observe(API_LATENCY, seconds)

    def flush(self) -> None:
        self._batch.flush()
