"""Where one UTC day's records lie in each partition of a topic, found with offsets_for_times.

A backfill reads exactly these windows. `low` and `high` say what Kafka still holds, so a caller
can tell records it re-read from records retention has deleted; nothing here reads a payload.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from confluent_kafka import TopicPartition

from itel_dagster.kafka.client_config import KafkaTarget
from itel_dagster.kafka.offsets import _partitions, _retrying, group_consumer


@dataclass(frozen=True)
class DayWindow:
    partition: int
    start: int  # first offset stamped at or after the day's start (or `high`: none yet)
    end: int  # first offset stamped at or after the next day's start (or `high`)
    low: int  # first offset Kafka still holds
    high: int  # next offset to be written, when the window was found

    @property
    def size(self) -> int:
        return self.end - self.start


def day_bounds_ms(day: date) -> tuple[int, int]:
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    return int(start.timestamp() * 1000), int((start + timedelta(days=1)).timestamp() * 1000)


def day_windows(bootstrap_servers: KafkaTarget, topic: str, day: date,
                timeout: float = 10.0) -> list[DayWindow]:
    """One window per partition. Producers may stamp out of order: records inside a window can
    carry another day's timestamp and records of the day can lie past `end` (Kafka's time index
    only guarantees none lies before `start`). A reader that must see the whole day reads from
    `start` to `high` and filters by timestamp."""
    first_ms, next_ms = day_bounds_ms(day)
    consumer = group_consumer(bootstrap_servers, "itel-range-reader")
    try:
        partitions = _partitions(consumer, topic, timeout)
        windows = []
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                       timeout=timeout, cached=False)
            # One lookup per timestamp: a request holds one timestamp per partition.
            start, end = (_offset_at(consumer, topic, partition, ms, high, timeout)
                          for ms in (first_ms, next_ms))
            windows.append(DayWindow(partition, min(start, end), end, low, high))
        return windows
    finally:
        consumer.close()


def _offset_at(consumer, topic: str, partition: int, timestamp_ms: int, high: int,
               timeout: float) -> int:
    [found] = _retrying(lambda: consumer.offsets_for_times(
        [TopicPartition(topic, partition, timestamp_ms)], timeout=timeout), timeout)
    return found.offset if found.offset >= 0 else high
