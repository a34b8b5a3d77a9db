"""Publishes a run's success and error records and waits until Kafka has them all.

`flush()` raises when any record was not delivered, so a run never commits offsets past a record
whose outcome is not durably on its topic.
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import Producer

from itel_dagster.kafka.client_config import KafkaTarget, client_config


QUEUE_BUFFER_KBYTES = 4_096  # 4 MiB: two records of the 2 MB maximum, thousands of usual ones


class DeliveryFailed(RuntimeError):
    pass


class ResultsProducer:
    def __init__(self, bootstrap_servers: KafkaTarget, client_id: str = "itel-dagster",
                 buffer_kbytes: int = QUEUE_BUFFER_KBYTES, **extra):
        self._producer = Producer(client_config(bootstrap_servers, **{
            "client.id": client_id,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            # Within the result topics' max.message.bytes (2 MiB, devstack/kafka/topics.py).
            "message.max.bytes": 2_000_000,
            # JSON records compress well; lz4 costs the least CPU of the codecs this
            # librdkafka build has (zstd compresses more but takes more of the shared 2 cores).
            "compression.type": "lz4",
            # Records waiting for delivery are held in this buffer (default 1 GB): bounded, a full
            # buffer makes send() wait for deliveries instead of holding a whole run's results.
            "queue.buffering.max.kbytes": buffer_kbytes,
            **extra,
        }))
        self._failures: list[str] = []
        self.sent = 0

    def _on_delivery(self, error, message) -> None:
        if error is not None:
            self._failures.append(f"{message.topic()}: {error}")

    def send(self, topic: str, records: Iterable[tuple]) -> int:
        """records: (key, value) or (key, value, headers) tuples."""
        count = 0
        for key, value, *rest in records:
            headers = rest[0] if rest else None
            while True:
                try:
                    self._producer.produce(topic, value=value, key=key, headers=headers,
                                           on_delivery=self._on_delivery)
                    break
                except BufferError:  # local queue full: let deliveries drain, then go on
                    self._producer.poll(0.5)
            count += 1
        self._producer.poll(0)
        self.sent += count
        return count

    def flush(self, timeout: float = 60.0) -> None:
        remaining = self._producer.flush(timeout)
        if remaining:
            raise DeliveryFailed(f"{remaining} result records not delivered within {timeout:.0f} s")
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryFailed(f"{len(failures)} result records failed: {failures[:3]}")
