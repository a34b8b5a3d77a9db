"""Reads the records of one partition's offset range [start, end) by assignment, not by group.

Offsets Kafka no longer holds (retention, compaction) are reported, never silently skipped: the
read says where the log started (`log_start`), so the caller can name the records retention
removed before they were handled. A read never claims offsets it did not reach: it ends short of
the range only at the log's end, and says where (`stopped_at`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

from confluent_kafka import Consumer, KafkaError, TopicPartition

from itel_dagster.kafka.client_config import KafkaTarget, client_config

READ_STALL_SECONDS = 30.0


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
    # The partition's first offset when the read began (its low watermark): a range starting
    # below it lost [start, log_start) to retention.
    log_start: int = 0
    value_bytes: int = 0  # bytes of the values read
    fetches: int = 0  # consume() calls that returned records (at most fetch_records each)
    # Set when the read ended before the range's end: `max_bytes` stopped it, or the log ends
    # there. The first offset not read (the rest of the range stays in Kafka).
    stopped_at: int | None = None


def read_range(
    bootstrap_servers: KafkaTarget, topic: str, partition: int, start: int, end: int,
    timeout: float = 30.0, stall_seconds: float = READ_STALL_SECONDS,
    max_bytes: int | None = None, first_record_always: bool = True,
    consumer_settings: dict | None = None, fetch_records: int = 10_000,
) -> RangeRead:
    """All records with start <= offset < end.

    Raises only when no record arrived for `stall_seconds` (a broker that stopped answering),
    however long the whole range takes. `timeout` bounds the watermark request.
    With `max_bytes`, stops before the record that would take the values read past it (the first
    record is read whatever its size unless `first_record_always` is False) and says where in
    `stopped_at`. A PARTITION_EOF before `end` stops the read (`stopped_at`) only when the log's
    high watermark is there too; while records exist past it (a stale fetch, a follower behind,
    an open transaction) the read goes on. `consumer_settings`: librdkafka settings added to the
    reader's own. `fetch_records`: records taken from the client per consume() call (a worker's
    batch_size).
    """
    result = RangeRead(log_start=start)
    if end <= start:
        return result
    consumer = Consumer(client_config(bootstrap_servers, **{
        "group.id": "itel-range-reader",  # never used for commits
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "fetch.max.bytes": 52_428_800,
        "max.partition.fetch.bytes": 10_485_760,
        **(consumer_settings or {}),
    }))
    try:
        low, _ = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
        result.log_start = low
        first = max(start, low)
        result.missing_offsets = first - start
        last = end
        if first >= last:
            return result
        consumer.assign([TopicPartition(topic, partition, first)])
        last_progress = time.monotonic()
        next_expected = first
        while next_expected < last:
            messages = consumer.consume(num_messages=min(fetch_records, last - next_expected),
                                        timeout=min(1.0, stall_seconds))
            if not messages:
                waited = time.monotonic() - last_progress
                if waited > stall_seconds:
                    raise TimeoutError(
                        f"read {topic}[{partition}] {start}..{end}: no record for {waited:.0f} s "
                        f"at offset {next_expected} ({len(result.records)} read)")
                continue
            if any(message.error() is None for message in messages):
                last_progress = time.monotonic()
                result.fetches += 1
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        # The consumer skipped [next_expected, eof) (compaction, transaction
                        # markers, aborted records): proven gaps.
                        next_expected = min(last, max(next_expected, message.offset()))
                        if next_expected >= last:
                            break
                        if _log_end(bootstrap_servers, topic, partition, timeout) <= next_expected:
                            result.stopped_at = last = next_expected  # the log ends here
                            break
                        continue  # records exist past it: a retry of the fetch, not a skip
                    raise RuntimeError(f"read {topic}[{partition}]: {error}")
                offset = message.offset()
                if offset >= last:
                    next_expected = last
                    break
                value = message.value()
                size = len(value) if value is not None else 0
                if (max_bytes is not None and result.value_bytes + size > max_bytes
                        and (result.records or not first_record_always)):
                    result.stopped_at = last = next_expected = offset
                    break
                _, timestamp_ms = message.timestamp()
                result.records.append(KafkaRecord(
                    topic=topic, partition=partition, offset=offset, timestamp_ms=timestamp_ms,
                    key=message.key(), value=value,
                ))
                result.value_bytes += size
                next_expected = offset + 1
        result.missing_offsets += (last - first) - len(result.records)
        return result
    finally:
        consumer.close()


def _log_end(bootstrap_servers: KafkaTarget, topic: str, partition: int, timeout: float) -> int:
    """The partition's high watermark, uncommitted transactions included: records exist up to it,
    even those a read_committed reader cannot see yet."""
    consumer = Consumer(client_config(bootstrap_servers, **{
        "group.id": "itel-range-reader", "isolation.level": "read_uncommitted"}))
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                 timeout=timeout, cached=False)
        return high
    finally:
        consumer.close()
