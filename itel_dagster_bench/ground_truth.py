"""What the bench published, read back from the input topic: each record's coordinates, Kafka
timestamp, event_id and whether it is bad (the publisher's itel_bad_kind header). Every figure
and every correctness check compares against this, never against what the pipeline reports.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from itel_dagster.devstack.publisher.events import BAD_KIND_HEADER, EVENT_ID_HEADER
from itel_dagster.kafka.client_config import client_config


@dataclass(frozen=True)
class InputRecord:
    partition: int
    offset: int
    timestamp_ms: int
    assignment_id: int | None  # the record key
    event_id: str | None
    bad_kind: str | None

    @property
    def valid(self) -> bool:
        return self.bad_kind is None


def _consumer(bootstrap: str) -> Consumer:
    return Consumer(client_config(bootstrap, **{
        "group.id": "itel-bench-reader", "enable.auto.commit": False,
        "enable.partition.eof": True, "isolation.level": "read_committed"}))


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """partition -> high watermark (the next offset to be written)."""
    consumer = _consumer(bootstrap)
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30,
                                                  cached=False)[1] for p in partitions}
    finally:
        consumer.close()


def record_count(bootstrap: str, topic: str) -> int:
    """Records a topic holds as read_committed readers see them (result topics are written in
    transactions: their offsets also count commit markers and aborted records)."""
    return sum(1 for _ in topic_messages(bootstrap, topic))


def topic_messages(bootstrap: str, topic: str, start: dict[int, int] | None = None,
                   end: dict[int, int] | None = None) -> Iterator[Message]:
    """The messages from `start` (default: the beginning) to `end` (default: now), per
    partition, in offset order."""
    end = end or end_offsets(bootstrap, topic)
    start = start or {}
    consumer = _consumer(bootstrap)
    try:
        for partition, high in sorted(end.items()):
            first = start.get(partition, 0)
            if first >= high:
                continue
            consumer.assign([TopicPartition(topic, partition, first)])
            while True:
                message = consumer.poll(10)
                if message is None:
                    raise RuntimeError(f"{topic}[{partition}] stopped before offset {high}")
                if message.error():
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        break  # the end (result topics end in transaction markers)
                    continue
                if message.offset() >= high:
                    break
                yield message
                if message.offset() >= high - 1:
                    break
    finally:
        consumer.close()


def committed_messages(bootstrap: str, topics: list[str], timeout: float = 30.0) -> list[Message]:
    """Every record a downstream reader with `isolation.level=read_committed` sees now in
    `topics`, each partition from its start to its last stable offset: records of aborted
    transactions and of transactions still open are not among them."""
    consumer = _consumer(bootstrap)
    try:
        unread = {(topic, p) for topic in topics
                  for p in consumer.list_topics(topic, timeout=timeout).topics[topic].partitions}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for topic, p in unread])
        found = []
        deadline = time.monotonic() + timeout
        while unread:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no end of {sorted(unread)} within {timeout:.0f} s")
            message = consumer.poll(1)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    unread.discard((message.topic(), message.partition()))
                continue
            found.append(message)
        return found
    finally:
        consumer.close()


def read_input(bootstrap: str, topic: str, start: dict[int, int] | None = None,
               end: dict[int, int] | None = None) -> list[InputRecord]:
    """The records from `start` (default: the beginning) to `end` (default: now), per partition."""
    found: list[InputRecord] = []
    for message in topic_messages(bootstrap, topic, start, end):
        headers = dict(message.headers() or [])
        key = message.key()
        event_id = headers.get(EVENT_ID_HEADER)
        bad_kind = headers.get(BAD_KIND_HEADER)
        found.append(InputRecord(
            partition=message.partition(), offset=message.offset(),
            timestamp_ms=message.timestamp()[1],
            assignment_id=int(key) if key and key.isdigit() else None,
            event_id=event_id.decode() if event_id else None,
            bad_kind=bad_kind.decode() if bad_kind else None,
        ))
    return found
