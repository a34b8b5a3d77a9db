"""Sends the publisher's records to a Kafka topic at a steady rate and reports what landed where.

Never reports a record the broker did not acknowledge: it flushes at the end and raises
PublishError when any delivery failed.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from confluent_kafka import KafkaException, Producer
from tqdm import tqdm

from itel_dagster.kafka.client_config import client_config
from itel_dagster.devstack.publisher.events import (
    PublishedRecord,
    generate_records,
    iso_timestamp,
    live_records,
)
from itel_dagster.devstack.publisher.upstream_events import upstream_records

DEFAULT_TOPIC = "itel.cabinet.task.tracking"
# Shorter runs finish before a bar would tell anything.
PROGRESS_BAR_FROM_COUNT = 1_000
# A publisher stalled this long (broker pause, GC) restarts its schedule instead of bursting.
_MAX_CATCH_UP_SECONDS = 1.0
# Longest single wait, so a stop signal is noticed promptly even at slow rates.
_WAIT_SLICE_SECONDS = 0.2
# Delivery callbacks are served in batches: polling after every record costs more than it tells.
_SERVE_DELIVERIES_EVERY = 100
_FLUSH_TIMEOUT_SECONDS = 120.0
_METADATA_TIMEOUT_SECONDS = 15.0

_PRODUCER_CONFIG = {
    "client.id": "itel-dagster-publisher",
    "acks": "all",
    "enable.idempotence": True,
    # Small batches soon: paced runs stay near real time, unpaced ones still batch well.
    "linger.ms": 20,
    "compression.type": "lz4",
    # A dead broker fails the run within a minute rather than librdkafka's default 5.
    "message.timeout.ms": 60_000,
}


class PublishError(RuntimeError):
    """The topic is unusable, or records were not acknowledged by the broker."""


@dataclass
class PublishSummary:
    topic: str
    total: int = 0
    valid: int = 0
    bad_by_kind: dict[str, int] = field(default_factory=dict)
    per_partition: dict[int, int] = field(default_factory=dict)
    first_timestamp_ms: int | None = None  # of the records, as Kafka stores them
    last_timestamp_ms: int | None = None
    elapsed_seconds: float = 0.0
    interrupted: bool = False  # stopped by SIGINT/SIGTERM (the normal end of continuous mode)

    @property
    def bad(self) -> int:
        return self.total - self.valid

    @property
    def records_per_second(self) -> float:
        return self.total / self.elapsed_seconds if self.elapsed_seconds else 0.0

    def describe(self) -> str:
        """A few lines for people: counts, partitions, time span."""
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.bad_by_kind.items()))
        partitions = " ".join(f"{p}={n}" for p, n in sorted(self.per_partition.items()))
        lines = [
            f"published {self.total} records to {self.topic} in {self.elapsed_seconds:.1f} s "
            f"({self.records_per_second:,.0f} records/s)"
            + (", stopped by signal" if self.interrupted else ""),
            f"  valid {self.valid}, bad {self.bad}" + (f" ({kinds})" if kinds else ""),
            f"  per partition: {partitions or '-'}",
        ]
        if self.first_timestamp_ms is not None and self.last_timestamp_ms is not None:
            lines.append(
                f"  timestamps {iso_timestamp(self.first_timestamp_ms)} .. "
                f"{iso_timestamp(self.last_timestamp_ms)}"
            )
        return "\n".join(lines)


class _Tally:
    """What was produced (by kind) and what the broker acknowledged (by partition)."""

    def __init__(self) -> None:
        self.produced = 0
        self.valid = 0
        self.bad_by_kind: Counter[str] = Counter()
        self.per_partition: Counter[int] = Counter()
        self.failures: list[str] = []
        self.first_ms: int | None = None
        self.last_ms: int | None = None

    def produced_one(self, record: PublishedRecord) -> None:
        self.produced += 1
        if record.bad_kind is None:
            self.valid += 1
        else:
            self.bad_by_kind[record.bad_kind] += 1

    def on_delivery(self, error, message) -> None:
        if error is not None:
            self.failures.append(str(error))
            return
        self.per_partition[message.partition()] += 1
        timestamp_ms = message.timestamp()[1]
        if self.first_ms is None or timestamp_ms < self.first_ms:
            self.first_ms = timestamp_ms
        if self.last_ms is None or timestamp_ms > self.last_ms:
            self.last_ms = timestamp_ms

    def summary(self, topic: str, elapsed: float, interrupted: bool) -> PublishSummary:
        return PublishSummary(
            topic=topic, total=self.produced, valid=self.valid,
            bad_by_kind=dict(self.bad_by_kind), per_partition=dict(self.per_partition),
            first_timestamp_ms=self.first_ms, last_timestamp_ms=self.last_ms,
            elapsed_seconds=elapsed, interrupted=interrupted,
        )


class _Pacer:
    """Spaces sends 1/rate apart on a fixed schedule, so small delays do not add up to a slower
    rate. It waits through `wait` (the producer's poll), which serves deliveries meanwhile."""

    def __init__(self, rate_per_second: float | None, wait: Callable[[float], object]):
        self._interval = 1.0 / rate_per_second if rate_per_second else 0.0
        self._wait = wait
        self._start: float | None = None  # set by the first send, after records are planned
        self._sent = 0

    def wait_turn(self, stop: threading.Event) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        if self._start is None:
            self._start = now
        due = self._start + self._sent * self._interval
        if now - due > _MAX_CATCH_UP_SECONDS:
            self._start, self._sent, due = now, 0, now
        while (delay := due - time.monotonic()) > 0 and not stop.is_set():
            self._wait(min(delay, _WAIT_SLICE_SECONDS))
        self._sent += 1


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT and SIGTERM set the event instead of raising mid-produce (which would lose count of
    a record in flight). Signals are only ours to handle in the main thread."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check_topic(producer: Producer, bootstrap_servers: str, topic: str) -> None:
    """Fail now, with a reason, rather than after message.timeout.ms of silent retries."""
    try:
        metadata = producer.list_topics(topic, timeout=_METADATA_TIMEOUT_SECONDS)
    except KafkaException as exc:
        raise PublishError(f"cannot reach Kafka at {bootstrap_servers}: {exc}") from exc
    topic_metadata = metadata.topics.get(topic)
    if topic_metadata is None or topic_metadata.error is not None:
        raise PublishError(
            f"topic {topic!r} is not usable on {bootstrap_servers} "
            f"({topic_metadata.error if topic_metadata else 'unknown topic'}); "
            "`itel-dagster kafka start` creates the pipeline's topics"
        )


def _produce(producer: Producer, topic: str, record: PublishedRecord, on_delivery) -> None:
    while True:
        try:
            producer.produce(
                topic, value=record.value, key=record.key, headers=record.headers,
                timestamp=record.timestamp_ms, on_delivery=on_delivery,
            )
            return
        except BufferError:  # local queue full: let deliveries drain, then retry
            producer.poll(0.1)


def _send_all(
    producer: Producer, topic: str, records: Iterable[PublishedRecord], pacer: _Pacer,
    tally: _Tally, progress: tqdm, stop: threading.Event, deadline: float | None,
) -> None:
    pending = iter(records)
    while True:
        pacer.wait_turn(stop)
        if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
            return
        # Taken after the wait, so a live record is stamped when it is sent.
        record = next(pending, None)
        if record is None:
            return
        _produce(producer, topic, record, tally.on_delivery)
        tally.produced_one(record)
        progress.update()
        if tally.produced % _SERVE_DELIVERIES_EVERY == 0:
            producer.poll(0)


def publish_events(
    bootstrap_servers: str,
    topic: str,
    count: int | None,
    rate_per_second: float | None = None,
    bad_fraction: float = 0.0,
    unknown_fraction: float = 0.0,
    days: float = 3.0,
    seed: int = 0,
    progress: bool = True,
    duration_seconds: float | None = None,
    upstream: bool = False,
    other_task_fraction: float = 0.3,
) -> PublishSummary:
    """Publish `count` records spread over the last `days`, or with count=None an endless stream
    stamped "now" until SIGINT/SIGTERM or `duration_seconds` (continuous mode, for the demo).

    rate_per_second=None sends as fast as the broker takes them. A signal ends any run early; the
    summary then says so. Raises PublishError when a record was not delivered.

    upstream=True: the events as ClaimX emits them, for the plugin trigger's input topic, a share
    `other_task_fraction` of them of other tasks (upstream_events.py).
    """
    if rate_per_second is not None and rate_per_second <= 0:
        raise ValueError(f"rate_per_second must be > 0, got {rate_per_second}")
    if count is None and rate_per_second is None and duration_seconds is None:
        raise ValueError("continuous mode (count=None) needs rate_per_second or duration_seconds")
    started = time.monotonic()
    if count is not None:
        records: Iterable[PublishedRecord] = generate_records(
            count, seed=seed, days=days, unknown_fraction=unknown_fraction, bad_fraction=bad_fraction
        )
    else:
        # The start time joins the seed so a restarted demo never repeats event_ids; a live
        # stream is stamped by the clock, so it does not repeat anyway.
        records = live_records(
            seed=f"{seed}:{time.time_ns()}", unknown_fraction=unknown_fraction,
            bad_fraction=bad_fraction,
        )
    if upstream:
        records = upstream_records(records, other_task_fraction, seed)
    producer = Producer(client_config(bootstrap_servers, **_PRODUCER_CONFIG))
    _check_topic(producer, bootstrap_servers, topic)

    tally = _Tally()
    show_progress = progress and (count is None or count > PROGRESS_BAR_FROM_COUNT)
    # The duration counts from the first send, not from connecting.
    deadline = time.monotonic() + duration_seconds if duration_seconds is not None else None
    with _stop_on_signals() as stop, tqdm(
        total=count, unit="rec", desc=topic, disable=not show_progress, smoothing=0.1
    ) as bar:
        _send_all(producer, topic, records, _Pacer(rate_per_second, producer.poll), tally, bar,
                  stop, deadline)
        undelivered = producer.flush(_FLUSH_TIMEOUT_SECONDS)
    summary = tally.summary(topic, time.monotonic() - started, interrupted=stop.is_set())
    if undelivered or tally.failures:
        raise PublishError(
            f"{undelivered + len(tally.failures)} of {tally.produced} records were not delivered "
            f"to {topic}" + (f"; first error: {tally.failures[0]}" if tally.failures else "")
        )
    return summary
