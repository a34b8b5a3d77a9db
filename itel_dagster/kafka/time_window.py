"""Where a time window [from, to) of a topic's record timestamps lies in each of its partitions,
found with offsets_for_times.

Only finds offsets; never reads a payload, never joins or commits a consumer group.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import TopicPartition

from itel_dagster.kafka.client_config import KafkaTarget
from itel_dagster.kafka.offsets import _partitions, _retrying, group_consumer


@dataclass(frozen=True)
class OffsetWindow:
    partition: int
    start: int  # first offset stamped at or after `from` (Kafka's low watermark without one)
    end: int  # first offset stamped at or after `to` (the high watermark without one)
    low: int  # first offset Kafka still holds
    high: int  # next offset to be written, when the window was found

    def clipped(self, start: int | None, end: int | None) -> OffsetWindow:
        """This window narrowed to offsets [start, end) (None: no bound)."""
        new_start = self.start if start is None else max(self.start, start)
        new_end = self.end if end is None else min(self.end, end)
        return OffsetWindow(self.partition, min(new_start, new_end), new_end, self.low, self.high)

    @property
    def size(self) -> int:
        return self.end - self.start


def time_windows(bootstrap_servers: KafkaTarget, topic: str, from_ms: int | None, to_ms: int | None,
                 timeout: float = 10.0) -> list[OffsetWindow]:
    """One window per partition of `topic`; from_ms / to_ms None: from the oldest record held /
    up to the newest. Records inside a window may carry out-of-order timestamps (Kafka keeps
    producer timestamps); callers that need strict bounds filter on them."""
    consumer = group_consumer(bootstrap_servers, "itel-range-reader")
    try:
        windows = []
        for partition in _partitions(consumer, topic, timeout):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                       timeout=timeout, cached=False)
            bounds = []
            for moment, default in ((from_ms, low), (to_ms, high)):
                if moment is None:
                    bounds.append(default)
                    continue
                [found] = _retrying(lambda: consumer.offsets_for_times(
                    [TopicPartition(topic, partition, moment)], timeout=timeout), timeout)
                bounds.append(found.offset if found.offset >= 0 else high)  # -1: none that late
            start, end = max(bounds[0], low), bounds[1]
            windows.append(OffsetWindow(partition, min(start, end), end, low, high))
        return windows
    finally:
        consumer.close()
