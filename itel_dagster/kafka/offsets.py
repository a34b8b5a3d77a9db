"""A consumer group's progress per partition, read and committed without joining the group.

The committed offset is the next record to process, so lag = end offset - committed, exactly as
`kafka-consumer-groups --describe` shows. Commits only move forward.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from itel_dagster.kafka.client_config import KafkaTarget, client_config, forget_checks, target_key

T = TypeVar("T")
# A fresh broker creates __consumer_offsets on first use; its coordinator answers these meanwhile.
_COORDINATOR_NOT_READY = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
}


@dataclass(frozen=True)
class PartitionProgress:
    partition: int
    committed: int | None  # None: the group never committed on this partition
    low: int  # first offset Kafka still holds
    high: int  # next offset to be written

    @property
    def next_offset(self) -> int:
        """Where processing resumes: the committed offset, or the oldest record Kafka holds."""
        if self.committed is None or self.committed < self.low:
            return self.low
        return self.committed

    @property
    def lag(self) -> int:
        return max(0, self.high - self.next_offset)


def group_consumer(bootstrap_servers: KafkaTarget, group: str, **extra) -> Consumer:
    """A consumer that carries the group id for commits but never subscribes (no rebalances)."""
    return Consumer(client_config(bootstrap_servers, **{
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        **extra,
    }))


def _retrying(call: Callable[[], T], timeout: float) -> T:
    """Retry while the group coordinator is not ready, or on other retriable errors."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except KafkaException as exc:
            error = exc.args[0]
            retriable = error.retriable() or error.code() in _COORDINATOR_NOT_READY
            if not retriable or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _partitions(consumer: Consumer, topic: str, timeout: float) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=timeout)
    described = metadata.topics.get(topic)
    if described is None or described.error is not None:
        reason = described.error if described is not None else "no metadata"
        raise RuntimeError(f"topic {topic!r} is not available: {reason}")
    return sorted(described.partitions)


class GroupProgressReader:
    """Reads a group's progress over one kept consumer, for callers that read it again and again
    (the sensors through kept_group_progress, the bench's waits): a consumer per read cost the
    broker a new connection and about 55 ms of CPU, a kept one about 8 ms
    (`python -m itel_dagster_bench.offsets_cost`)."""

    def __init__(self, bootstrap_servers: KafkaTarget, group: str):
        self._consumer = group_consumer(bootstrap_servers, group)

    def read(self, topic: str, timeout: float = 10.0) -> list[PartitionProgress]:
        consumer = self._consumer
        partitions = _partitions(consumer, topic, timeout)
        committed = _retrying(
            lambda: consumer.committed([TopicPartition(topic, p) for p in partitions], timeout),
            timeout,
        )
        progress = []
        for tp in committed:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, tp.partition), timeout=timeout, cached=False
            )
            progress.append(PartitionProgress(
                partition=tp.partition,
                committed=tp.offset if tp.offset >= 0 else None,
                low=low,
                high=high,
            ))
        return progress

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> GroupProgressReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def group_progress(
    bootstrap_servers: KafkaTarget, group: str, topic: str, timeout: float = 10.0
) -> list[PartitionProgress]:
    with GroupProgressReader(bootstrap_servers, group) as reader:
        return reader.read(topic, timeout)


# Readers kept for the sensors, which read their group's progress several times a tick, every
# few seconds, in the long-lived code server: (servers, group) -> reader and its lock.
KEPT_READERS = 8
_kept: OrderedDict[tuple[str, str], tuple[GroupProgressReader, threading.Lock]] = OrderedDict()
_kept_lock = threading.Lock()


def kept_group_progress(
    bootstrap_servers: KafkaTarget, group: str, topic: str, timeout: float = 10.0
) -> list[PartitionProgress]:
    """group_progress over a consumer this process keeps (at most KEPT_READERS, the least
    recently used closed first). A read that fails drops its reader: the next one starts fresh."""
    key = (target_key(bootstrap_servers), group)
    with _kept_lock:
        if key in _kept:
            _kept.move_to_end(key)
        else:
            _kept[key] = (GroupProgressReader(bootstrap_servers, group), threading.Lock())
            while len(_kept) > KEPT_READERS:
                _, (oldest, oldest_lock) = _kept.popitem(last=False)
                with oldest_lock:
                    oldest.close()
        reader, lock = _kept[key]
    with lock:
        try:
            return reader.read(topic, timeout)
        except BaseException:
            with _kept_lock:
                if _kept.get(key, (None,))[0] is reader:
                    del _kept[key]
            reader.close()
            forget_checks()  # the next reader checks the credentials again
            raise


def close_kept_readers() -> None:
    with _kept_lock:
        kept = list(_kept.values())
        _kept.clear()
    for reader, lock in kept:
        with lock:
            reader.close()


def commit_offsets(
    bootstrap_servers: KafkaTarget, group: str, topic: str, next_offsets: dict[int, int],
    timeout: float = 10.0,
) -> dict[int, int]:
    """Commit `partition -> next offset to process` where it moves forward; returns what moved."""
    consumer = group_consumer(bootstrap_servers, group)
    try:
        committed = _retrying(
            lambda: consumer.committed([TopicPartition(topic, p) for p in next_offsets], timeout),
            timeout,
        )
        current = {tp.partition: tp.offset for tp in committed}
        forward = {p: o for p, o in next_offsets.items() if o > current.get(p, -1)}
        if forward:
            _retrying(
                lambda: consumer.commit(
                    offsets=[TopicPartition(topic, p, o) for p, o in forward.items()],
                    asynchronous=False,
                ),
                timeout,
            )
        return forward
    finally:
        consumer.close()


def record_timestamp_ms(
    bootstrap_servers: KafkaTarget, topic: str, partition: int, offset: int, timeout: float = 10.0
) -> int | None:
    """The Kafka timestamp of the record at `offset` (or the next one Kafka holds), else None."""
    consumer = group_consumer(bootstrap_servers, "itel-range-reader", **{"enable.partition.eof": True})
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                if message.error().code() == KafkaError._PARTITION_EOF:
                    return None
                raise KafkaException(message.error())
            return message.timestamp()[1]
        raise TimeoutError(f"no record at {topic}[{partition}]@{offset} within {timeout:.0f} s")
    finally:
        consumer.close()


def first_offset_at_or_after(
    bootstrap_servers: KafkaTarget, topic: str, partition: int, timestamp_ms: int,
    timeout: float = 10.0
) -> int | None:
    """The first offset whose timestamp is >= timestamp_ms, or None when there is none yet."""
    consumer = group_consumer(bootstrap_servers, "itel-range-reader")
    try:
        [found] = _retrying(
            lambda: consumer.offsets_for_times(
                [TopicPartition(topic, partition, timestamp_ms)], timeout=timeout
            ),
            timeout,
        )
        return found.offset if found.offset >= 0 else None
    finally:
        consumer.close()
