"""Reads the records of one partition's offset range [start, end) by assignment, not by group.

Offsets Kafka no longer holds (retention, compaction) are reported, never silently skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

from confluent_kafka import Consumer, KafkaError, TopicPartition


class KafkaRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


@dataclass
class RangeRead:
    records: list[KafkaRecord] = field(default_factory=list)
    # Offsets of the range below Kafka's low watermark or in gaps (retention, compaction).
    # Offsets at or past the end of the log are not records yet and are not counted.
    missing_offsets: int = 0


def read_range(
    bootstrap_servers: str, topic: str, partition: int, start: int, end: int,
    timeout: float = 30.0,
) -> RangeRead:
    """All records with start <= offset < end; raises if they cannot be read within `timeout`."""
    result = RangeRead()
    if end <= start:
        return result
    consumer = Consumer({
        "bootstrap.servers": bootstrap_servers,
        "group.id": "itel-range-reader",  # never used for commits
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "fetch.max.bytes": 52_428_800,
        "max.partition.fetch.bytes": 10_485_760,
    })
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
        first = max(start, low)
        result.missing_offsets = first - start
        last = min(end, high)
        if first >= last:
            return result
        consumer.assign([TopicPartition(topic, partition, first)])
        deadline = time.monotonic() + timeout
        next_expected = first
        while next_expected < last:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"read {topic}[{partition}] {start}..{end}: stopped at offset {next_expected}"
                )
            for message in consumer.consume(num_messages=min(10_000, last - next_expected),
                                            timeout=1.0):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        next_expected = last  # nothing more is there (compacted tail)
                        break
                    raise RuntimeError(f"read {topic}[{partition}]: {error}")
                offset = message.offset()
                if offset >= last:
                    next_expected = last
                    break
                _, timestamp_ms = message.timestamp()
                result.records.append(KafkaRecord(
                    topic=topic, partition=partition, offset=offset, timestamp_ms=timestamp_ms,
                    key=message.key(), value=message.value(),
                ))
                next_expected = offset + 1
        result.missing_offsets += (last - first) - len(result.records)
        return result
    finally:
        consumer.close()

